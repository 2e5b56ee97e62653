"""`cdfast score` as a resumable job: shards of records, skipped when already written, split
across torchrun ranks (shard k goes to rank k % WORLD_SIZE)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from cd_fast.data import ReadConfig, Trace, TraceReader
from cd_fast.models import load_causal_lm
from cd_fast.runs import RunFolder, job_manifest
from cd_fast.runtime import batched, rank_info
from cd_fast.score.scorer import ScoreConfig, Scorer
from cd_fast.score.store import MANIFEST as SCORE_MANIFEST
from cd_fast.score.store import shard_path, write_manifest, write_shard


class ScoreRun(RunFolder):
    """score's output folder: manifest.json (the run's manifest, then its totals), one Parquet
    shard per `shard_size` records (a shard that exists is whole), .lock."""

    MANIFEST = SCORE_MANIFEST

    def work(self) -> str | None:
        shards = len(list(self.output.glob("shard-*.parquet"))) if self.output.is_dir() else 0
        return f"{shards} shards of scores" if shards else None

    def refusal(self, work: str) -> str:
        return (
            f"{self.output} already holds scores: pass --resume to continue that run, or "
            "choose a new output folder"
        )


def score_file(
    source: str | Path | TraceReader | Iterable[Trace],
    output: str | Path,
    config: ScoreConfig,
    read: ReadConfig | None = None,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    loaded: tuple[Any, Any] | None = None,
) -> Scorer:
    """Score every record of `source` (a trace file read with `read`, or records) into `output`
    (a folder of shards + manifest).

    `loaded` is an already loaded (model, tokenizer) to use instead of `config.model`'s. The
    run's manifest (input files, reading options, the options that decide the scores) is
    checked on --resume: a run under other settings is refused. `on_progress(n)` gets the
    records finished since its last call."""
    read = read or ReadConfig()
    output = Path(output)
    rank = rank_info().rank
    if loaded is None and not config.model:
        raise ValueError("ScoreConfig.model: name the scorer LM (folder, hub id or .gguf)")
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} is a file: score writes a folder; choose another -o")
    records = read.records(read.open(source))
    manifest = job_manifest("score", read, source, config.result_options())
    # rank 0 takes the lock, checks the folder and starts the run; the model loads after it
    run = ScoreRun(output, manifest, resume) if rank == 0 else contextlib.nullcontext()
    with run:
        model, tokenizer = loaded or load_causal_lm(config.model, device=config.device)
        scorer = Scorer(model, tokenizer, config)
        if rank == 0:
            run.start()
        return _score_shards(records, output, scorer, manifest, on_progress)


def _score_shards(
    records: Iterator[Trace],
    output: Path,
    scorer: Scorer,
    manifest: dict[str, Any],
    on_progress: Callable[[int], None] | None,
) -> Scorer:
    ranks = rank_info()
    rank, world = ranks.rank, ranks.world_size
    shards = count = 0
    for shard, batch in enumerate(batched(records, scorer.config.shard_size)):
        if shard % world == rank and not shard_path(output, shard).exists():
            write_shard(output, shard, scorer.score(batch))
        if on_progress is not None:
            on_progress(len(batch))
        shards, count = shard + 1, count + len(batch)
    write_manifest(output, {**manifest, "total_shards": shards, "records": count})
    return scorer
