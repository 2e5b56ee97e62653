"""Trace compression: token/step pruning by importance, truncation, generative rewriting.

units.py     the units step pruning keeps or drops, and which state the answer
backbone.py  value flow (the model-free step criterion) and token pruning's priorities
criteria.py  the importance criteria registry: what each needs, how it scores
select.py    choosing under a budget, words and spans, joining kept text
item.py      what methods work with (Item, Selection, MethodContext)
methods.py   the four methods (token, step, truncate, rewrite)
engine.py    the Compressor: counting, budget planning, the answer policy
job.py       files, resume and the `compress()` API; agreement.py, rewrite.py, html.py
"""

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.criteria import CRITERIA, METHOD_CRITERIA, Criterion
from cd_fast.compress.engine import Compressor, RecordResult, adaptive_targets
from cd_fast.compress.job import CompressResult, build_engine, compress, compress_file
from cd_fast.compress.methods import METHODS, Method

__all__ = [
    "CRITERIA",
    "METHODS",
    "METHOD_CRITERIA",
    "CompressConfig",
    "CompressResult",
    "Compressor",
    "Criterion",
    "Method",
    "RecordResult",
    "adaptive_targets",
    "build_engine",
    "compress",
    "compress_file",
]
