"""Trace compression: token/step pruning by importance, truncation, generative rewriting."""

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.engine import Compressor, RecordResult, adaptive_targets, final_answer
from cd_fast.compress.job import CompressResult, build_engine, compress, compress_file

__all__ = [
    "CompressConfig",
    "CompressResult",
    "Compressor",
    "RecordResult",
    "adaptive_targets",
    "build_engine",
    "compress",
    "compress_file",
    "final_answer",
]
