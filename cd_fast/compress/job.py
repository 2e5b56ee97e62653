"""`cdfast compress` as a resumable job, and the `compress()` Python API.

While running, OUT.partial holds the compressed records and OUT.state.jsonl the run's manifest
(first line), then one line per finished batch, written after the batch's records: its
accounting rows, how many input records are done, where OUT.partial ends, the compressor's state.
A killed run resumes from the last whole state line: OUT.partial is cut back to the length that
line names and the next batch starts where it left off, so batches (and the budget carried
between them) are those of a straight run. OUT.lock keeps a second writer out. On success the
partial file is renamed to OUT and the summary (with the manifest, so a --resume of a finished
output under other settings is refused) goes to OUT.summary.json.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.criteria import CRITERIA, SCORER
from cd_fast.compress.engine import Compressor, RecordResult
from cd_fast.compress.roles import role_summary
from cd_fast.data import AtomicWriter, ReadConfig, Trace, TraceReader, dumps_record
from cd_fast.generate import BackendConfig
from cd_fast.runs import RunFolder, job_manifest
from cd_fast.runtime import batched

STATE_SUFFIX = ".state.jsonl"

STATE_FIELDS = (
    "id",
    "tokens_before",
    "tokens_after",
    "chars_before",
    "chars_after",
    "answer_in_original",
    "answer_kept",
    "action",
    "kept_steps",
    "asked_tokens",
    "budget_miss",
    "role_chars",
)


@dataclass
class CompressResult:
    records: list[Trace]
    """Compressed records, in input order (dropped ones left out)."""
    summary: dict[str, Any]


def summarize(rows: list[dict[str, Any]], seconds: dict[str, float], engine: Compressor):
    """Dataset-level accounting from the per-record state rows."""
    kept = [r for r in rows if r["action"] not in ("dropped", "empty")]
    ratios = np.array([r["tokens_after"] / max(r["tokens_before"], 1) for r in kept])
    before = sum(r["tokens_before"] for r in rows)
    before_kept = sum(r["tokens_before"] for r in kept)
    after = sum(r["tokens_after"] for r in kept)
    chars_before = sum(r["chars_before"] for r in kept)
    chars_after = sum(r["chars_after"] for r in kept)
    with_answer = [r for r in rows if r["answer_in_original"]]
    actions = {
        a: sum(r["action"] == a for r in rows)
        for a in ("compressed", "expanded", "original", "dropped", "empty")
    }
    missed = collections.Counter(r["budget_miss"] for r in kept if r.get("budget_miss"))
    total_seconds = sum(seconds.values())
    percentiles = np.percentile(ratios, [10, 50, 90]) if len(ratios) else [0.0] * 3
    return {
        **engine.method.describe(),
        "adaptive": engine.config.adaptive,
        "records": len(rows),
        "records_out": len(kept) + actions["empty"],
        "tokens_before": before,
        "tokens_after": after,
        "ratio_tokens": round(after / max(before_kept, 1), 4),
        "ratio_chars": round(chars_after / max(chars_before, 1), 4),
        "ratio_asked": round(
            sum(r.get("asked_tokens") or 0 for r in kept) / max(before_kept, 1), 4
        ),
        "records_missing_budget": sum(missed.values()),
        "budget_miss_reasons": dict(missed.most_common()),
        "ratio_mean": round(float(ratios.mean()), 4) if len(ratios) else 0.0,
        "ratio_p10": round(float(percentiles[0]), 4),
        "ratio_p50": round(float(percentiles[1]), 4),
        "ratio_p90": round(float(percentiles[2]), 4),
        "answers_in_original": len(with_answer),
        "answers_kept": sum(bool(r["answer_kept"]) for r in with_answer),
        "answers_lost_before_policy": actions["expanded"]
        + actions["original"]
        + actions["dropped"],
        **{f"records_{action}": count for action, count in actions.items()},
        "roles": role_summary([r["role_chars"] for r in kept if r.get("role_chars")]),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "traces_per_s": round(len(rows) / total_seconds, 3) if total_seconds else None,
        "tokens_per_s": round(before / total_seconds, 1) if total_seconds else None,
    }


def _state_row(result: RecordResult) -> dict[str, Any]:
    row = asdict(result)
    return {k: row[k] for k in STATE_FIELDS}


def _is_empty(trace: Trace) -> bool:
    return not trace.trace.strip()


def _compress_batch(engine: Compressor, batch: list[Trace]) -> list[RecordResult]:
    """The engine's results in input order; an empty trace passes through unchanged (action
    "empty", left out of the ratios) instead of counting as compressed to nothing."""
    texts = [t for t in batch if not _is_empty(t)]
    results = iter(engine(texts) if texts else [])
    out = []
    for trace in batch:
        if not _is_empty(trace):
            out.append(next(results))
            continue
        meta = {**trace.meta, "compression": {**engine.method.describe(), "action": "empty"}}
        out.append(
            RecordResult(
                id=trace.id,
                trace=dataclasses.replace(trace, meta=meta, steps=None),
                tokens_before=0,
                tokens_after=0,
                chars_before=len(trace.trace),
                chars_after=len(trace.trace),
                answer_in_original=False,
                answer_kept=None,
                action="empty",
                kept_steps=None,
            )
        )
    return out


def compress(
    records: Iterable[Trace | dict[str, Any]],
    method: str,
    budget: float | None = 0.3,
    *,
    counter: Any = None,
    scorer: Any = None,
    scores: dict[str, Any] | None = None,
    rewriter: Any = None,
    match_lengths: dict[str, int] | None = None,
    **options: Any,
) -> CompressResult:
    """Compress traces in memory.

    Args:
        records: Trace objects or dicts of the Trace layout.
        method: "token", "step", "truncate" or "rewrite"; budget: fraction of tokens to keep.
        counter: the student's tokenizer (default: the scorer's).
        scorer: a cd_fast.score.Scorer (token/step criteria other than random, adaptive).
        scores: precomputed RecordScores by id, instead of a scorer.
        rewriter: a `cd_fast.generate.Generator` for method "rewrite".
        options: any other CompressConfig field (criterion, adaptive, on_lost_answer, ...).
    """
    if match_lengths is not None:
        options.setdefault("match_lengths", "<in memory>")
    config = CompressConfig(method=method, budget=budget, **options)
    counter = counter or (scorer.tokenizer if scorer is not None else None)
    if counter is None:
        raise ValueError("pass counter= (the student's tokenizer) or a scorer")
    engine = Compressor(config, counter, scorer, scores, match_lengths, rewriter)
    traces = [r if isinstance(r, Trace) else Trace.from_dict(r) for r in records]
    out: list[Trace] = []
    rows: list[dict[str, Any]] = []
    for batch in batched(traces, config.batch_size):
        for result in _compress_batch(engine, batch):
            rows.append(_state_row(result))
            if result.trace is not None:
                out.append(result.trace)
    if _all_empty(rows):
        raise ValueError(_ALL_EMPTY.format(n=len(rows)))
    return CompressResult(out, summarize(rows, engine.seconds, engine))


_ALL_EMPTY = (
    "every trace is empty ({n} records): nothing to compress; check which field holds the "
    "reasoning (--layout, --field trace=KEY)"
)


def _all_empty(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["action"] == "empty" for r in rows)


def _job_files(output: Path) -> tuple[Path, Path, Path]:
    """OUT.partial, OUT.state.jsonl, OUT.summary.json."""
    return tuple(  # type: ignore[return-value]
        output.with_name(output.name + suffix)
        for suffix in (".partial", STATE_SUFFIX, ".summary.json")
    )


@dataclass
class CommittedBatches:
    """What the committed lines of a state file say: the batches' rows, the input records they
    consumed, the length of the output they wrote and the compressor's state after them."""

    rows: list[dict[str, Any]]
    records_done: int = 0
    output_bytes: int = 0
    compressor: dict[str, Any] | None = None
    input_chain: str = ""  # hash chain over the batches of input records consumed
    state_bytes: int = 0  # where the last whole line of the state file ends


def _read_state(state: Path) -> tuple[dict[str, Any] | None, CommittedBatches]:
    """The manifest line and the committed batches; a line cut short by a kill is ignored."""
    committed = CommittedBatches(rows=[])
    manifest = None
    if not state.is_file():
        return manifest, committed
    offset = 0
    with state.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break  # written in part when the run died: that batch is redone
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(
                    f"{state}:{number}: not a compress state line; the file was edited or "
                    "damaged: remove it and its .partial to start over"
                ) from None
            offset += len(line)
            if number == 1:
                manifest = entry.get("manifest")
                committed.state_bytes = offset
                continue
            committed.rows += entry["rows"]
            committed.records_done = entry["records_done"]
            committed.output_bytes = entry["output_bytes"]
            committed.compressor = entry["compressor"]
            committed.input_chain = entry["input_chain"]
            committed.state_bytes = offset
    return manifest, committed


class CompressRun(RunFolder):
    """compress's output: OUT written whole at the end (its summary, with the manifest, in
    OUT.summary.json), OUT.partial and OUT.state.jsonl while it runs (the manifest on the state
    file's first line), OUT.lock."""

    def __init__(self, output: Path, manifest: dict[str, Any], resume: bool):
        super().__init__(output, manifest, resume)
        self.partial, self.state, self.summary = _job_files(self.output)
        self.manifest_line, self.committed = _read_state(self.state)

    @property
    def lock_file(self) -> Path:
        return self.output.with_name(self.output.name + ".lock")

    @property
    def in_progress(self) -> bool:
        return bool(self.committed.rows)

    @property
    def manifest_file(self) -> Path:
        return self.state if self.in_progress else self.summary

    @property
    def skip_inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        # an interrupted run may go on with an edited input (a bad line fixed) as long as the
        # records it finished are unchanged (checked by their hash chain); a finished one not
        return ("input",) if self.in_progress else ()

    def work(self) -> str | None:
        self.manifest_line, self.committed = _read_state(self.state)
        if self.in_progress:
            return f"{self.committed.records_done} records of an interrupted run"
        return "a finished output" if self.output.exists() else None

    def refusal(self, work: str) -> str:
        if self.in_progress:
            return (
                f"{self.partial} holds {work}: pass --resume to continue it, or remove it and "
                "its .state.jsonl to start over"
            )
        return f"{self.output} exists: choose another output, or remove it"

    def scratch(self) -> list[Path]:
        return [self.partial, self.state]

    def saved_manifest(self) -> dict[str, Any] | None:
        if self.in_progress:
            return self.manifest_line
        if self.summary.is_file():
            return json.loads(self.summary.read_text(encoding="utf-8")).get("manifest")
        return None

    def write_manifest(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with AtomicWriter(self.state) as handle:
            handle.write(json.dumps({"manifest": self.manifest}) + "\n")
        self.partial.write_bytes(b"")  # a new run's records start empty (an old run's are dropped)
        self.committed = CommittedBatches(rows=[], state_bytes=self.state.stat().st_size)


def compress_file(
    source: str | Path | TraceReader | Iterable[Trace],
    output: str | Path,
    config: CompressConfig,
    read: ReadConfig | None = None,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    engine: Compressor | None = None,
    backend: BackendConfig | None = None,
) -> dict[str, Any]:
    """Compress every record of `source` (a trace file read with `read`, or records) into
    `output` (JSONL), resumably; returns the summary.

    The run's manifest (the input files, reading options, every option that decides the
    output) is checked on --resume: a run under other settings is refused. `engine` is a
    Compressor built from `config` (default: `build_engine(config, backend)`, once the output
    is known to be writable). `on_progress(n)` is called with the number of input records
    done."""
    read = read or ReadConfig()
    output = Path(output)
    opened = read.open(source)
    options = config.result_options()
    if config.method == "rewrite":
        options["backend"] = (backend or BackendConfig()).backend
    manifest = job_manifest("compress", read, source, options, inputs=config.input_files())
    with CompressRun(output, manifest, resume) as run:
        if run.saved is not None and not run.in_progress:  # finished earlier, same settings
            summary = json.loads(run.summary.read_text(encoding="utf-8"))
            summary.pop("manifest", None)
            return summary
        engine = engine or build_engine(config, backend)
        records = iter(read.records(opened))
        committed = run.committed
        if run.saved is not None:
            consumed = itertools.islice(records, committed.records_done)
            if _input_chain(batched(consumed, config.batch_size)) != committed.input_chain:
                raise ValueError(
                    f"{run.state}: the first {committed.records_done} input records differ from "
                    "those the interrupted run compressed: resume with its input, or start a "
                    "new output"
                )
            if not run.partial.is_file() or run.partial.stat().st_size < committed.output_bytes:
                raise ValueError(
                    f"{run.partial} is shorter than its state file says ({committed.output_bytes} "
                    "bytes): it was edited or damaged; remove both to start over"
                )
            os.truncate(run.partial, committed.output_bytes)  # an unfinished batch's records
            os.truncate(run.state, committed.state_bytes)
            if committed.compressor is not None:
                engine.load_state_dict(committed.compressor)
        else:
            run.start()
            committed = run.committed
        return _run(records, run, engine, committed, on_progress)


def _chain(previous: str, batch: list[Trace]) -> str:
    digest = hashlib.sha256(previous.encode())
    for trace in batch:
        digest.update(dumps_record(trace).encode("utf-8"))
    return digest.hexdigest()


def _input_chain(batches: Iterable[list[Trace]]) -> str:
    chain = ""
    for batch in batches:
        chain = _chain(chain, batch)
    return chain


def _run(
    records: Iterator[Trace],
    run: CompressRun,
    engine: Compressor,
    committed: CommittedBatches,
    on_progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Compress the records after `committed`, committing each batch: its records to .partial,
    then one state line that says where .partial ends (a kill at any byte resumes exactly)."""
    rows, done, written = committed.rows, committed.records_done, committed.output_bytes
    chain = committed.input_chain
    started = time.perf_counter()
    if on_progress is not None:
        on_progress(done)
    with run.partial.open("ab") as records_out, run.state.open("ab") as state_out:
        for batch in batched(records, engine.config.batch_size):
            results = _compress_batch(engine, batch)
            lines = "".join(dumps_record(r.trace) + "\n" for r in results if r.trace)
            written += records_out.write(lines.encode("utf-8"))
            records_out.flush()
            os.fsync(records_out.fileno())
            batch_rows = [_state_row(result) for result in results]
            rows += batch_rows
            done += len(batch)
            chain = _chain(chain, batch)
            line = {
                "rows": batch_rows,
                "records_done": done,
                "output_bytes": written,
                "input_chain": chain,
                "compressor": engine.state_dict(),
            }
            state_out.write((json.dumps(line) + "\n").encode("utf-8"))
            state_out.flush()
            os.fsync(state_out.fileno())
            if on_progress is not None:
                on_progress(done)
    if _all_empty(rows):
        run.partial.unlink()
        run.state.unlink()
        raise ValueError(_ALL_EMPTY.format(n=len(rows)))
    seconds = dict(engine.seconds)
    seconds["other"] = max(0.0, time.perf_counter() - started - sum(engine.seconds.values()))
    summary = summarize(rows, seconds, engine)
    with AtomicWriter(run.summary) as handle:
        json.dump({**summary, "manifest": run.manifest}, handle, indent=1)
    os.replace(run.partial, run.output)
    run.state.unlink()
    return summary


def build_engine(config: CompressConfig, backend: BackendConfig | None = None) -> Compressor:
    """Load what the config names: counting tokenizer, scorer, score store, matched lengths,
    the rewriter on its generation `backend` (default: transformers)."""
    from cd_fast.models import load_causal_lm, load_tokenizer
    from cd_fast.score import Scorer, ScoreStore

    scorer = None
    needs_scorer = config.needs_scores and config.scores is None
    criterion = CRITERIA.get(config.criterion) if config.criterion else None
    if (criterion is not None and criterion.needs == SCORER) or needs_scorer:
        if not config.scorer:
            raise ValueError(
                f"method {config.method} with criterion {config.criterion} needs --scores DIR "
                "(from `cdfast score`) or --scorer MODEL"
                if needs_scorer
                else f"criterion {config.criterion} runs the scorer LM: pass --scorer"
            )
        model, tokenizer = load_causal_lm(config.scorer, device=config.device)
        scorer = Scorer(model, tokenizer, target_template=config.target_template)
    if config.tokenizer:
        counter = load_tokenizer(config.tokenizer)
    elif scorer is not None:
        counter = scorer.tokenizer
    elif config.scorer:
        counter = load_tokenizer(config.scorer)
    else:
        raise ValueError("pass --tokenizer (the student's) to count the budget's tokens")
    scores = ScoreStore(config.scores).by_id() if config.scores else None
    match = None
    if config.match_lengths:
        other = list(TraceReader(config.match_lengths))
        counts = counter([t.trace for t in other], add_special_tokens=False)["input_ids"]
        match = {t.id: len(ids) for t, ids in zip(other, counts, strict=True)}
    rewriter = None
    if config.method == "rewrite":
        if not config.rewriter:
            raise ValueError("method rewrite needs --rewriter (a model, or the served name)")
        from cd_fast.generate import make_generator

        rewriter = make_generator(
            config.rewriter,
            backend,
            device=config.device,
            batch_size=config.generation_batch_size,
        )
    return Compressor(config, counter, scorer, scores, match, rewriter)
