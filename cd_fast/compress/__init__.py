"""Trace compression: token/step pruning by importance, truncation, generative rewriting."""

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.engine import Compressor, RecordResult, adaptive_targets
from cd_fast.compress.job import CompressResult, build_engine, compress, compress_file
from cd_fast.compress.methods import METHODS, Method

__all__ = [
    "METHODS",
    "CompressConfig",
    "CompressResult",
    "Compressor",
    "Method",
    "RecordResult",
    "adaptive_targets",
    "build_engine",
    "compress",
    "compress_file",
]
