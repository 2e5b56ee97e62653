"""Trace I/O: the Trace record, streaming readers with layout detection, the reading options
(`ReadConfig`), atomic writers."""

from cd_fast.data.config import ReadConfig
from cd_fast.data.readers import (
    LAYOUTS,
    Skip,
    TraceReader,
    detect_layout,
    parse_fields,
    read_traces,
)
from cd_fast.data.record import DataError, Trace
from cd_fast.data.writer import AtomicWriter, dumps_record, write_jsonl

__all__ = [
    "LAYOUTS",
    "AtomicWriter",
    "DataError",
    "ReadConfig",
    "Skip",
    "Trace",
    "TraceReader",
    "detect_layout",
    "dumps_record",
    "parse_fields",
    "read_traces",
    "write_jsonl",
]
