"""`cdfast score` as a resumable job: shards of records, skipped when already written, split
across torchrun ranks (shard k goes to rank k % WORLD_SIZE)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cd_fast.data import TraceReader
from cd_fast.models import load_causal_lm
from cd_fast.runs import RunLock, check_same_run, run_manifest
from cd_fast.runtime import batched, rank_info, take
from cd_fast.score.scorer import ScoreConfig, Scorer
from cd_fast.score.store import MANIFEST, read_manifest, shard_path, write_manifest, write_shard


def score_file(
    reader: TraceReader,
    output: Path,
    config: ScoreConfig,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    limit: int | None = None,
    loaded: tuple[Any, Any] | None = None,
    manifest: dict[str, Any] | None = None,
) -> Scorer:
    """Score every record `reader` yields into `output` (a folder of shards + manifest).

    `loaded` is an already loaded (model, tokenizer) to use instead of `config.model`'s.
    `manifest` (cd_fast.runs.run_manifest) names the inputs and reading options; --resume
    under another one is refused. `on_progress(n)` gets the records finished since its last
    call."""
    rank = rank_info().rank
    if loaded is None and not config.model:
        raise ValueError("ScoreConfig.model: name the scorer LM (folder, hub id or .gguf)")
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} is a file: score writes a folder; choose another -o")
    if manifest is None:
        manifest = run_manifest("score", {"input": reader.source.path}, {"limit": limit})
    manifest = {**manifest, "options": {**manifest["options"], **config.result_options()}}
    existing = read_manifest(output) if rank == 0 else None  # rank 0 checks and starts the run
    if existing is not None and not any(output.glob("shard-*.parquet")):
        existing = None  # a run that stopped before its first shard: nothing to keep
    if existing is not None:
        if not resume:
            raise ValueError(
                f"{output} already holds scores: pass --resume to continue that run, or "
                "choose a new output folder"
            )
        if "options" not in existing:
            raise ValueError(f"{output}: scored by an older cd_fast; score into a new folder")
        check_same_run(existing, manifest, output / MANIFEST)
    # the model loads (or is refused) before a new run's folder exists: a failed start leaves
    # nothing behind
    model, tokenizer = loaded or load_causal_lm(config.model, device=config.device)
    scorer = Scorer(model, tokenizer, config)
    lock = RunLock(output / ".lock", str(output)) if rank == 0 else contextlib.nullcontext()
    with lock:
        if existing is None and rank == 0:
            write_manifest(output, manifest)
        return _score_shards(reader, output, scorer, manifest, on_progress, limit)


def _score_shards(
    reader: TraceReader,
    output: Path,
    scorer: Scorer,
    manifest: dict[str, Any],
    on_progress: Callable[[int], None] | None,
    limit: int | None,
) -> Scorer:
    ranks = rank_info()
    rank, world = ranks.rank, ranks.world_size
    config = scorer.config
    shards = records = 0
    for shard, batch in enumerate(batched(take(reader, limit), config.shard_size)):
        if shard % world == rank and not shard_path(output, shard).exists():
            write_shard(output, shard, scorer.score(batch))
        if on_progress is not None:
            on_progress(len(batch))
        shards, records = shard + 1, records + len(batch)
    write_manifest(output, {**manifest, "total_shards": shards, "records": records})
    return scorer
