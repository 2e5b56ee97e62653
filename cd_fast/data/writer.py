"""Atomic writers: output appears complete under its final name or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cd_fast.data.record import Trace


class AtomicWriter:
    """Write to a temp file beside `path`; on success fsync and rename over `path`, on error
    remove the temp file and leave any earlier `path` untouched."""

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path = Path(path)
        self.mode = mode
        self._handle: IO[Any] | None = None
        self._tmp: str | None = None

    def __enter__(self) -> IO[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as error:  # name the output, not the temp file it could not create
            raise OSError(error.errno, error.strerror, str(self.path)) from None
        encoding = None if "b" in self.mode else "utf-8"
        self._handle = os.fdopen(fd, self.mode, encoding=encoding)
        return self._handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._handle is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
            self._handle.close()
            if exc_type is None:
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def dumps_record(record: Trace | dict[str, Any]) -> str:
    """One JSONL line (no trailing newline), UTF-8 text kept readable; NaN and Infinity, which
    strict JSON parsers refuse, are refused here."""
    obj = record.to_dict() if isinstance(record, Trace) else record
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_jsonl(path: str | Path, records: Iterable[Trace | dict[str, Any]]) -> int:
    """Atomically write records as JSONL; returns how many were written."""
    count = 0
    with AtomicWriter(path) as handle:
        for record in records:
            handle.write(dumps_record(record))
            handle.write("\n")
            count += 1
    return count
