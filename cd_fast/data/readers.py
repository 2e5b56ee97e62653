"""Streaming trace readers: JSONL (optionally gzipped), JSON arrays and Parquet, in constant
memory, with layout auto-detection, explicit field mapping and prompt joining.

Layouts recognised on the first record (explicit ``fields`` override any of them):

- ``trace``: the native record (``id``, ``question``, ``trace``, ``answer``, ``gold``, ``meta``).
- ``messages``: chat ``messages``; the last assistant turn carries ``<think>..</think>`` or a
  ``reasoning_content``/``reasoning``/``thinking`` field, the user turn before it the question.
- ``reasoning``: a ``thinking``/``reasoning_content``/``reasoning`` field next to the response
  (``content``/``response``/...), e.g. Ollama or vLLM dumps.
- ``think``: a completion (``completion``/``response``/``output``/``generation``/``text``) that
  holds ``<think>..</think>`` (the opening tag may be missing: Qwen templates put it in the prompt).
- ``problem_solution``: ``problem`` + ``solution`` (+ ``answer`` as gold), e.g. MATH.
- ``gsm8k``: ``question`` + ``answer`` whose last line is ``#### <gold>``.
- ``questions``: a question (``question``/``prompt``/``problem``/...) and an optional gold
  answer, no trace (the trace is empty): what `cdfast generate` and `cdfast eval` read. Detected
  only for readers that do not need traces (``need_traces=False``); other commands take it when
  named with ``--layout questions``.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cd_fast.data.record import DataError, Trace, _kind
from cd_fast.formats import THINK_CLOSE, THINK_OPEN, split_completion

TARGETS = ("id", "question", "trace", "answer", "gold", "completion")
LAYOUTS = (
    "auto",
    "trace",
    "messages",
    "reasoning",
    "think",
    "problem_solution",
    "gsm8k",
    "questions",
)

_ID_KEYS = ("id", "item_id", "unique_id", "uid", "problem_id", "question_id", "idx")
_QUESTION_KEYS = ("question", "prompt", "problem", "input", "instruction", "query")
_REASONING_KEYS = ("thinking", "reasoning_content", "reasoning", "think", "cot")
_RESPONSE_KEYS = ("content", "response", "completion", "output", "generation", "text")
_GOLD_KEYS = ("gold", "answer", "expected_answer", "final_answer", "target")
_JOIN_KEYS = ("item_id", "prompt_id", "question_id", "problem_id", "id")
_GSM8K_CALCULATOR = re.compile(r"<<[^<>]*>>")
_THINK_PREFIX = THINK_OPEN.rstrip(">")  # "<think": an opening tag, with attributes or not
_THINK_TAGS = f"{THINK_OPEN}..{THINK_CLOSE}"


@dataclass(frozen=True)
class Skip:
    """A record left out under ``skip_invalid``."""

    location: str
    id: str | None
    reason: str


def parse_fields(specs: list[str] | None) -> dict[str, str]:
    """``["question=prompt", "trace=thinking"]`` -> {"question": "prompt", ...}."""
    mapping: dict[str, str] = {}
    for spec in specs or []:
        target, sep, source = spec.partition("=")
        target, source = target.strip(), source.strip()
        if not sep or not source or target not in TARGETS:
            raise ValueError(
                f"--field {spec!r}: expected TARGET=SOURCE with TARGET one of {', '.join(TARGETS)}"
            )
        mapping[target] = source
    return mapping


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _first_text(
    record: Mapping[str, Any], keys: tuple[str, ...], skip: set[str], numbers: bool = False
) -> str | None:
    """The first of `keys` holding a string (or, with `numbers`, a number too)."""
    types = (str, int, float) if numbers else str
    for key in keys:
        value = record.get(key)
        if key not in skip and isinstance(value, types) and not isinstance(value, bool):
            return key
    return None


def detect_layout(record: Mapping[str, Any]) -> str | None:
    if isinstance(record.get("trace"), str) and "question" in record:
        return "trace"
    if isinstance(record.get("messages"), list):
        return "messages"
    if _first_text(record, _REASONING_KEYS, set()):
        return "reasoning"
    if any(isinstance(record.get(k), str) and THINK_CLOSE in record[k] for k in _RESPONSE_KEYS):
        return "think"
    if isinstance(record.get("problem"), str) and isinstance(record.get("solution"), str):
        return "problem_solution"
    answer = record.get("answer")
    if isinstance(record.get("question"), str) and isinstance(answer, str) and "####" in answer:
        return "gsm8k"
    return None


class _Converter:
    """Turns raw records of one layout (plus explicit field overrides) into Trace records."""

    def __init__(self, layout: str, fields: dict[str, str], source: str, stem: str):
        self.layout = layout
        self.fields = fields
        self.source = source
        self.stem = stem

    def __call__(self, raw: Any, location: str, number: int) -> Trace:
        if not isinstance(raw, dict):
            raise DataError(self.source, location, f"expected a JSON object, got {_kind(raw)}")
        values, used = self._from_layout(raw, location)
        for target, path in self.fields.items():
            value = _lookup(raw, path)
            if value is None and target in ("question", "trace", "completion"):
                raise DataError(self.source, location, "mapped field is missing", path)
            values[target] = value
            used.add(path.split(".")[0])
        if "completion" in self.fields:
            if not isinstance(values["completion"], str):
                got = _kind(values["completion"])
                raise DataError(
                    self.source,
                    location,
                    f"expected a string, got {got}",
                    self.fields["completion"],
                )
            values["trace"], values["answer"] = split_completion(values.pop("completion"))
        for target in ("answer", "gold"):
            value = values.get(target)
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[target] = str(value)
        if values.get("id") is None:
            values["id"] = f"{self.stem}:{number}"
        meta = {} if raw.get("meta") is None else raw["meta"]
        if not isinstance(meta, dict):
            raise DataError(self.source, location, f"expected an object, got {_kind(meta)}", "meta")
        meta = dict(meta)
        meta.update({k: v for k, v in raw.items() if k not in used and k != "meta"})
        values["meta"] = meta
        return Trace.from_dict(values, self.source, location)

    def _from_layout(self, raw: dict[str, Any], location: str) -> tuple[dict[str, Any], set[str]]:
        used: set[str] = set()
        values: dict[str, Any] = {}
        id_key = next((k for k in _ID_KEYS if raw.get(k) not in (None, "")), None)
        if id_key is not None:
            values["id"] = raw[id_key]
            used.add(id_key)
        if self.layout == "mapped":
            return values, used

        def take(target: str, keys: tuple[str, ...], required: bool) -> None:
            key = _first_text(raw, keys, used, numbers=target == "gold")
            if key is None:
                if required and target not in self.fields:
                    raise DataError(
                        self.source,
                        location,
                        f"a {self.layout}-layout record needs one of {', '.join(keys)} "
                        "(map another with --field)",
                        target,
                    )
                return
            values[target] = raw[key]
            used.add(key)

        layout = self.layout
        if layout == "trace":  # types are checked by Trace.from_dict, with the field named
            for target in ("question", "trace", "answer", "gold", "steps"):
                if target in raw:
                    values[target] = raw[target]
                    used.add(target)
        elif layout == "messages":
            used.add("messages")
            values.update(self._from_messages(raw["messages"], location))
            take("gold", _GOLD_KEYS, required=False)
        elif layout == "reasoning":
            take("trace", _REASONING_KEYS, required=True)
            take("question", _QUESTION_KEYS, required=True)
            take("answer", _RESPONSE_KEYS, required=False)
            take("gold", _GOLD_KEYS, required=False)
        elif layout == "think":
            take("question", _QUESTION_KEYS, required=True)
            key = next(
                (
                    k
                    for k in _RESPONSE_KEYS
                    if isinstance(raw.get(k), str) and _THINK_PREFIX in raw[k]
                ),
                None,
            ) or _first_text(raw, _RESPONSE_KEYS, used)
            if key is None and "trace" not in self.fields:
                raise DataError(
                    self.source, location, f"no completion with {_THINK_TAGS}", "completion"
                )
            if key is not None:
                values["trace"], values["answer"] = split_completion(raw[key])
                used.add(key)
            take("gold", _GOLD_KEYS, required=False)
        elif layout == "problem_solution":
            take("question", ("problem",), required=True)
            take("trace", ("solution",), required=True)
            take("gold", ("answer", "gold"), required=False)
            values["answer"] = values.get("gold")
        elif layout == "gsm8k":
            take("question", ("question",), required=True)
            solution = raw.get("answer")
            if not isinstance(solution, str) or "####" not in solution:
                raise DataError(
                    self.source, location, "expected a solution ending in '#### <answer>'", "answer"
                )
            body, _, gold = solution.rpartition("####")
            values["trace"] = _GSM8K_CALCULATOR.sub("", body).strip()
            values["gold"] = values["answer"] = gold.strip()
            used.add("answer")
        elif layout == "questions":
            take("question", _QUESTION_KEYS, required=True)
            take("gold", _GOLD_KEYS, required=False)
            values["trace"] = ""
        return values, used

    def _from_messages(self, messages: list[Any], location: str) -> dict[str, Any]:
        def bad(message: str) -> DataError:
            return DataError(self.source, location, message, "messages")

        if not all(isinstance(m, dict) for m in messages):
            raise bad("expected a list of {role, content} objects")
        assistant = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"),
            None,
        )
        if assistant is None:
            raise bad("no assistant message")
        user = next(
            (i for i in range(assistant - 1, -1, -1) if messages[i].get("role") == "user"), None
        )
        if user is None or not isinstance(messages[user].get("content"), str):
            raise bad("no user message (with string content) before the last assistant message")
        reply = messages[assistant]
        content = reply.get("content") if isinstance(reply.get("content"), str) else ""
        reasoning_key = _first_text(reply, _REASONING_KEYS, set())
        if reasoning_key is not None:
            trace, answer = reply[reasoning_key], content.strip() or None
        elif THINK_CLOSE in content or THINK_OPEN in content:
            trace, answer = split_completion(content)
        else:
            raise bad(f"the last assistant message has no {_THINK_TAGS} or reasoning field")
        return {"question": messages[user]["content"], "trace": trace, "answer": answer}


class _RawSource:
    """(location, number, record-or-error) from one file."""

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        suffixes = "".join(path.suffixes[-2:]).lower()
        if suffixes.endswith(".parquet"):
            self.kind = "parquet"
        elif suffixes.endswith(".json"):
            self.kind = "json"
        elif suffixes.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            self.kind = "jsonl"
        else:
            raise DataError(
                self.name, "", "unknown format: expected .jsonl, .jsonl.gz, .json or .parquet"
            )
        if not path.is_file():
            raise DataError(self.name, "", "no such file")

    def count_hint(self) -> int | None:
        """How many records the file holds, when that is cheap to know: a Parquet row count,
        the lines of a plain JSONL (counted at disk speed; blank ones too); else None."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        if self.kind != "jsonl" or self.path.suffix.lower() == ".gz":
            return None
        lines, last = 0, b"\n"
        with self.path.open("rb") as handle:
            for block in iter(lambda: handle.read(16 << 20), b""):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        if self.kind == "jsonl":
            yield from self._jsonl()
        elif self.kind == "json":
            yield from self._json()
        else:
            yield from self._parquet()

    def _jsonl(self) -> Iterator[tuple[str, int, Any]]:
        gzipped = self.path.suffix.lower() == ".gz"
        opener = gzip.open if gzipped else open
        number = 0
        try:
            with opener(self.path, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    yield from self._jsonl_line(number, line)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            where = f"line {number + 1}" if number else ""
            raise DataError(
                self.name,
                where,
                f"corrupt or truncated gzip data ({error}): re-create or re-download the file, "
                "or decompress what is readable with `gzip -dc` and pass the .jsonl",
            ) from None

    def _jsonl_line(self, number: int, line: bytes) -> Iterator[tuple[str, int, Any]]:
        if number == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            return
        location = f"line {number}"
        try:
            record = _strict_json(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            yield location, number, DataError(self.name, location, f"not UTF-8 ({error})")
        except ValueError as error:
            yield location, number, DataError(self.name, location, f"invalid JSON: {error}")
        else:
            yield location, number, _checked_unicode(record, line, self.name, location)

    def _json(self) -> Iterator[tuple[str, int, Any]]:
        raw = self.path.read_bytes()
        try:
            data = _strict_json(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as error:
            raise DataError(self.name, "", f"invalid JSON file: {error}") from error
        if not isinstance(data, list):
            raise DataError(self.name, "", f"expected a JSON array of records, got {_kind(data)}")
        for number, record in enumerate(data, start=1):
            location = f"item {number}"
            yield location, number, _checked_unicode(record, raw, self.name, location)

    def _parquet(self) -> Iterator[tuple[str, int, Any]]:
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                number += 1
                if isinstance(record.get("meta"), str):
                    with contextlib.suppress(json.JSONDecodeError):
                        record["meta"] = json.loads(record["meta"])
                yield f"row {number}", number, record


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (strict parsers refuse it): write null or a string")


def _strict_json(text: str) -> Any:
    """json.loads without its extensions (NaN, Infinity) and with one error for nesting too
    deep to read."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply to read (thousands of levels)") from None


# \ud800-\udfff escapes: a JSON text can spell a lone surrogate only this way (UTF-8 bytes cannot)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _checked_unicode(record: Any, raw: bytes, source: str, location: str) -> Any:
    """`record`, or a DataError naming the field that holds a lone surrogate (an escape such as
    \\ud800 that no valid text contains: tokenizers and UTF-8 writers fail on it)."""
    if not _SURROGATE_ESCAPE.search(raw):
        return record
    path = _surrogate_path(record, "")
    if path is None:
        return record
    return DataError(
        source, location, "holds a lone surrogate (\\ud800-\\udfff): not valid Unicode", path
    )


def _surrogate_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(the record)"
        return None
    if isinstance(value, dict):
        pairs = value.items()
    elif isinstance(value, list):
        pairs = enumerate(value)
    else:
        return None
    for key, item in pairs:
        if isinstance(key, str) and _surrogate_path(key, "") is not None:
            return f"{path}.{key!r}".lstrip(".")
        found = _surrogate_path(item, f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


class _PromptIndex:
    """A prompts file (small next to the traces) keyed for joining."""

    def __init__(self, path: Path, key: str):
        self.name = str(path)
        self.key = key
        self.by_key: dict[str, dict[str, Any]] = {}
        for location, _, record in _RawSource(path):
            if isinstance(record, DataError):
                raise record
            if not isinstance(record, dict):
                raise DataError(self.name, location, f"expected an object, got {_kind(record)}")
            value = record.get(key)
            if value is None:
                raise DataError(self.name, location, "join key is missing", key)
            if str(value) in self.by_key:
                raise DataError(self.name, location, f"duplicate join key {value!r}", key)
            self.by_key[str(value)] = record


class TraceReader:
    """Iterate Trace records from a file, streaming.

    Args:
        path: .jsonl / .jsonl.gz / .json / .parquet file.
        layout: one of LAYOUTS; "auto" detects it on the first record.
        fields: TARGET -> source field (dotted paths reach nested objects); overrides the layout.
        prompts: a prompts file to join onto each record (its fields fill in what the trace lacks).
        join: "TRACE_KEY=PROMPT_KEY" (or one KEY for both); default: item_id/prompt_id/... = id.
        skip_invalid: count and list bad records in `skipped` instead of raising DataError.
        need_traces: False for commands that read only questions (and golds): "auto" then
            takes a file of bare questions as the "questions" layout.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        layout: str = "auto",
        fields: dict[str, str] | None = None,
        prompts: str | Path | None = None,
        join: str | None = None,
        skip_invalid: bool = False,
        need_traces: bool = True,
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.source = _RawSource(Path(path))
        self.fields = dict(fields or {})
        self.layout = layout
        self.skip_invalid = skip_invalid
        self.skipped: list[Skip] = []
        self.records = 0
        self.prompts_path = Path(prompts) if prompts is not None else None
        self._join = join
        self.need_traces = need_traces
        self._converter: _Converter | None = None

    def count_hint(self) -> int | None:
        """How many records the file holds, when cheap to know (for progress bars), else None."""
        return self.source.count_hint()

    @property
    def records_read(self) -> int:
        """Records read so far, valid or skipped."""
        return self.records + len(self.skipped)

    def __iter__(self) -> Iterator[Trace]:
        prompts: _PromptIndex | None = None
        trace_key = None
        first_seen: dict[str, str] = {}
        for location, number, raw in self.source:
            try:
                if isinstance(raw, DataError):
                    raise raw
                if self.prompts_path is not None and isinstance(raw, dict):
                    if prompts is None:
                        trace_key, prompts = self._open_prompts(raw, location)
                    raw = self._joined(raw, trace_key, prompts, location)
                if self._converter is None:
                    self._converter = self._make_converter(raw, location)
                trace = self._converter(raw, location, number)
                if trace.id in first_seen:
                    raise DataError(
                        self.source.name,
                        location,
                        f"duplicate id {trace.id!r} (first at {first_seen[trace.id]}): give each "
                        "record its own id, map another field with --field id=KEY, or "
                        "--skip-invalid",
                        "id",
                    )
                first_seen[trace.id] = location
            except DataError as error:
                if not self.skip_invalid:
                    raise
                self.skipped.append(Skip(location, _raw_id(raw), error.detail))
                continue
            self.records += 1
            yield trace
        if not self.records:
            why = f"all {len(self.skipped)} records are invalid" if self.skipped else "no records"
            raise DataError(self.source.name, "", f"{why}: nothing to do; check the file")

    def _open_prompts(self, first: dict[str, Any], location: str) -> tuple[str, _PromptIndex]:
        assert self.prompts_path is not None
        if self._join:
            trace_key, _, prompt_key = self._join.partition("=")
            prompt_key = prompt_key or trace_key
        else:
            trace_key = next((k for k in _JOIN_KEYS if k in first), "")
            prompt_key = "id"
            if not trace_key:
                raise DataError(
                    self.source.name,
                    location,
                    f"no join key found (tried {', '.join(_JOIN_KEYS)}); pass --join KEY=KEY",
                )
        return trace_key, _PromptIndex(self.prompts_path, prompt_key)

    def _joined(
        self, raw: dict[str, Any], trace_key: str, prompts: _PromptIndex, location: str
    ) -> dict[str, Any]:
        value = raw.get(trace_key)
        if value is None:
            raise DataError(self.source.name, location, "join key is missing", trace_key)
        prompt = prompts.by_key.get(str(value))
        if prompt is None:
            raise DataError(
                self.source.name,
                location,
                f"no record with {prompts.key}={value!r} in {prompts.name}",
                trace_key,
            )
        return {**prompt, **raw}

    def _make_converter(self, first: Any, location: str) -> _Converter:
        layout = self.layout
        mapped = "question" in self.fields and (
            "trace" in self.fields or "completion" in self.fields
        )
        if mapped:
            layout = "mapped"
        elif layout == "auto":
            detected = detect_layout(first) if isinstance(first, dict) else None
            if detected is None and not self.need_traces and isinstance(first, dict):
                detected = "questions" if _first_text(first, _QUESTION_KEYS, set()) else None
            if detected is None:
                keys = ", ".join(sorted(first)) if isinstance(first, dict) else _kind(first)
                raise DataError(
                    self.source.name,
                    location,
                    f"cannot detect the layout (keys: {keys}); map fields with "
                    "--field question=KEY --field trace=KEY (or completion=KEY for "
                    f"{THINK_OPEN} text)",
                )
            layout = detected
        self.layout = layout
        return _Converter(
            layout, self.fields, self.source.name, self.source.path.name.split(".")[0]
        )


def _raw_id(raw: Any) -> str | None:
    if isinstance(raw, dict):
        for key in _ID_KEYS:
            if raw.get(key) not in (None, ""):
                return str(raw[key])
    return None


def read_traces(path: str | Path, **options: Any) -> Iterator[Trace]:
    """Shorthand for ``iter(TraceReader(path, **options))``."""
    return iter(TraceReader(path, **options))
