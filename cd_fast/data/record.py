"""The Trace record every stage reads and writes, and the error that names where input is bad."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """Bad input: names the file, the line (or row/item), the field and what was expected."""

    def __init__(self, source: str, location: str, message: str, field: str | None = None):
        self.source = source
        self.location = location
        self.field = field
        self.detail = f"field '{field}': {message}" if field else message
        where = f"{source}:{location}" if location else source
        super().__init__(f"{where}: {self.detail}")


@dataclass
class Trace:
    """One reasoning trace: `trace` is the text inside <think>...</think>, `answer` what follows."""

    id: str
    question: str
    trace: str
    answer: str | None = None
    gold: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    steps: list[list[int]] | None = None
    """[start, end) character offsets of the reasoning steps in `trace` (`cdfast segment`)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "trace": self.trace,
            "answer": self.answer,
            "gold": self.gold,
            "meta": self.meta,
        }
        if self.steps is not None:
            out["steps"] = self.steps
        return out

    @classmethod
    def from_dict(cls, obj: Any, source: str = "<dict>", location: str = "") -> Trace:
        """Validate a record of the Trace layout (DESIGN.md) and build it."""
        if not isinstance(obj, dict):
            raise DataError(source, location, f"expected a JSON object, got {_kind(obj)}")

        def text(name: str, optional: bool = False) -> str | None:
            value = obj.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                expected = "a string or null" if optional else "a string"
                got = "missing" if name not in obj else _kind(value)
                raise DataError(source, location, f"expected {expected}, got {got}", name)
            return value

        record_id = obj.get("id")
        if isinstance(record_id, int) and not isinstance(record_id, bool):
            record_id = str(record_id)
        if not isinstance(record_id, str) or not record_id:
            raise DataError(
                source, location, f"expected a non-empty string, got {_kind(record_id)}", "id"
            )
        meta = {} if obj.get("meta") is None else obj["meta"]
        if not isinstance(meta, dict):
            raise DataError(source, location, f"expected an object, got {_kind(meta)}", "meta")
        question, trace = text("question"), text("trace")
        steps = obj.get("steps")
        if steps is not None and not _is_offset_pairs(steps, len(trace)):
            raise DataError(
                source,
                location,
                f"expected [start, end] pairs inside the trace ({len(trace)} characters), in "
                "order; drop the field or run `cdfast segment` on this file again",
                "steps",
            )
        return cls(
            id=record_id,
            question=question,
            trace=trace,
            answer=text("answer", optional=True),
            gold=text("gold", optional=True),
            meta=meta,
            steps=steps,
        )


def _is_offset_pairs(value: Any, length: int) -> bool:
    """[[start, end], ...] with 0 <= start <= end <= length, starts in order (segmenter steps)."""
    if not isinstance(value, list) or not all(
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        for pair in value
    ):
        return False
    starts = [a for a, _ in value]
    return all(0 <= a <= b <= length for a, b in value) and starts == sorted(starts)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
