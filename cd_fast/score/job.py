"""`cdfast score` as a resumable job: shards of records, skipped when already written, split
across torchrun ranks (shard k goes to rank k % WORLD_SIZE)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cd_fast.data import TraceReader
from cd_fast.models import load_causal_lm
from cd_fast.score.scorer import ScoreConfig, Scorer
from cd_fast.score.store import read_manifest, shard_path, write_manifest, write_shard


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process: 0, 1, 0)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _input_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"input": str(path), "input_bytes": stat.st_size}


def score_file(
    reader: TraceReader,
    output: Path,
    config: ScoreConfig,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    limit: int | None = None,
    loaded: tuple[Any, Any] | None = None,
) -> Scorer:
    """Score every record `reader` yields into `output` (a folder of shards + manifest).

    `loaded` is an already loaded (model, tokenizer) to use instead of `config.model`'s."""
    rank, world, local_rank = distributed_rank()
    device = config.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    output.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": 1,
        **_input_fingerprint(reader.source.path),
        "model": config.model,
        "shard_size": config.shard_size,
        "window": config.window,
        "overlap": config.overlap,
        "limit": limit,
    }
    existing = read_manifest(output) if rank == 0 else None  # rank 0 checks and starts the run
    if existing is not None:
        if not resume:
            raise ValueError(f"{output} already holds scores; pass --resume to continue it")
        changed = [k for k in manifest if existing.get(k) != manifest[k]]
        if changed:
            raise ValueError(
                f"{output} was started with other settings ({', '.join(changed)}); "
                "use a new output folder"
            )
    elif rank == 0:
        write_manifest(output, manifest)

    model, tokenizer = loaded or load_causal_lm(config.model, device=device)
    scorer = Scorer(
        model,
        tokenizer,
        max_tokens_per_batch=config.max_tokens_per_batch,
        window=config.window,
        overlap=config.overlap,
        chunk_size=config.chunk_size,
        threads=config.threads,
    )
    shard, batch, seen = 0, [], 0

    def flush() -> None:
        nonlocal shard, batch
        mine = shard % world == rank
        if batch and mine and not shard_path(output, shard).exists():
            write_shard(output, shard, scorer.score(batch))
        if on_progress is not None:
            on_progress(len(batch))
        shard, batch = shard + 1, []

    for trace in reader:
        if limit is not None and seen == limit:
            break
        batch.append(trace)
        seen += 1
        if len(batch) == config.shard_size:
            flush()
    if batch:
        flush()
    write_manifest(output, {**manifest, "total_shards": shard, "records": seen})
    return scorer
