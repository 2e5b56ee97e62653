"""`cdfast compress` as a resumable job, and the `compress()` Python API.

While running, OUT.partial holds the compressed records and OUT.state.jsonl one accounting line
per finished record (written after its record). A killed run resumes from those: records in the
state file are done; partial lines without a state line are dropped and redone. On success the
partial file is renamed to OUT and the summary goes to OUT.summary.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.engine import Compressor, RecordResult
from cd_fast.data import AtomicWriter, Trace, TraceReader, dumps_record
from cd_fast.runtime import batched, take

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
)


@dataclass
class CompressResult:
    records: list[Trace]
    """Compressed records, in input order (dropped ones left out)."""
    summary: dict[str, Any]


def summarize(rows: list[dict[str, Any]], seconds: dict[str, float], config: CompressConfig):
    """Dataset-level accounting from the per-record state rows."""
    kept = [r for r in rows if r["action"] != "dropped"]
    ratios = np.array([r["tokens_after"] / max(r["tokens_before"], 1) for r in kept])
    before = sum(r["tokens_before"] for r in rows)
    before_kept = sum(r["tokens_before"] for r in kept)
    after = sum(r["tokens_after"] for r in kept)
    chars_before = sum(r["chars_before"] for r in kept)
    chars_after = sum(r["chars_after"] for r in kept)
    with_answer = [r for r in rows if r["answer_in_original"]]
    actions = {
        a: sum(r["action"] == a for r in rows)
        for a in ("compressed", "expanded", "original", "dropped")
    }
    total_seconds = sum(seconds.values())
    percentiles = np.percentile(ratios, [10, 50, 90]) if len(ratios) else [0.0] * 3
    return {
        **config.describe(),
        "adaptive": config.adaptive,
        "records": len(rows),
        "records_out": len(kept),
        "tokens_before": before,
        "tokens_after": after,
        "ratio_tokens": round(after / max(before_kept, 1), 4),
        "ratio_chars": round(chars_after / max(chars_before, 1), 4),
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
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "traces_per_s": round(len(rows) / total_seconds, 3) if total_seconds else None,
        "tokens_per_s": round(before / total_seconds, 1) if total_seconds else None,
    }


def _state_row(result: RecordResult) -> dict[str, Any]:
    row = asdict(result)
    return {k: row[k] for k in STATE_FIELDS}


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
        rewriter: a backend from cd_fast.compress.rewrite for method "rewrite".
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
        for result in engine(batch):
            rows.append(_state_row(result))
            if result.trace is not None:
                out.append(result.trace)
    return CompressResult(out, summarize(rows, engine.seconds, config))


def _read_progress(partial: Path, state: Path) -> list[dict[str, Any]]:
    """Finished rows from the state file, and repair both files to the last whole record."""
    rows: list[dict[str, Any]] = []
    if state.is_file():
        for line in state.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n"):
                rows.append(json.loads(line))
    done = {r["id"] for r in rows}
    kept_lines = []
    if partial.is_file():
        for line in partial.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n") and json.loads(line)["id"] in done:
                kept_lines.append(line)
    with AtomicWriter(partial) as handle:
        handle.writelines(kept_lines)
    with AtomicWriter(state) as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def compress_file(
    reader: TraceReader | Iterable[Trace],
    output: Path,
    config: CompressConfig,
    engine: Compressor,
    resume: bool = False,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Compress every record into `output` (JSONL), resumably; returns the summary."""
    partial = output.with_name(output.name + ".partial")
    state = output.with_name(output.name + ".state.jsonl")
    summary_path = output.with_name(output.name + ".summary.json")
    if (partial.exists() or state.exists()) and not resume:
        raise ValueError(f"{partial} exists (an interrupted run): pass --resume to continue it")
    if output.exists() and not resume:
        raise ValueError(f"{output} exists; choose another output or remove it")
    if resume and output.exists() and not partial.exists() and summary_path.exists():
        return json.loads(summary_path.read_text())  # finished earlier
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = _read_progress(partial, state) if resume else []
    done = {r["id"] for r in rows}
    if rows:  # the budget carry, so a resumed run equals a straight one
        if "compressor" not in rows[-1]:
            raise ValueError(
                f"{state}: written by an older cd_fast without the compressor's state; "
                "compress again into a new output"
            )
        engine.load_state_dict(rows[-1]["compressor"])
    started = time.perf_counter()

    def pending() -> Iterator[Trace]:
        for index, record in enumerate(take(reader, limit)):
            if on_progress is not None:
                on_progress(index)
            if record.id not in done:
                yield record

    with partial.open("a", encoding="utf-8") as records_out, state.open("a") as state_out:
        for batch in batched(pending(), config.batch_size):
            results = engine(batch)
            records_out.writelines(dumps_record(r.trace) + "\n" for r in results if r.trace)
            records_out.flush()
            os.fsync(records_out.fileno())
            for result in results:
                row = {**_state_row(result), "compressor": engine.state_dict()}
                rows.append(row)
                state_out.write(json.dumps(row) + "\n")
            state_out.flush()
            os.fsync(state_out.fileno())
    seconds = dict(engine.seconds)
    seconds["other"] = max(0.0, time.perf_counter() - started - sum(engine.seconds.values()))
    summary = summarize(rows, seconds, config)
    with AtomicWriter(summary_path) as handle:
        json.dump(summary, handle, indent=1)
    os.replace(partial, output)
    state.unlink()
    return summary


def build_engine(config: CompressConfig) -> Compressor:
    """Load what the config names: counting tokenizer, scorer, score store, matched lengths,
    rewriter backend."""
    from cd_fast.models import load_causal_lm, load_tokenizer
    from cd_fast.score import Scorer, ScoreStore

    scorer = None
    needs_scorer = config.needs_scores and config.scores is None
    if config.criterion == "answer-delta" or needs_scorer:
        if not config.scorer:
            raise ValueError(
                f"method {config.method} with criterion {config.criterion} needs --scores DIR "
                "(from `cdfast score`) or --scorer MODEL"
                if needs_scorer
                else "criterion answer-delta runs the scorer LM: pass --scorer"
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
        from cd_fast.compress.rewrite import make_rewriter

        rewriter = make_rewriter(config)
    return Compressor(config, counter, scorer, scores, match, rewriter)
