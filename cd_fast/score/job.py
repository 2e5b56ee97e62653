"""`cdfast score` as a resumable job: shards of records, skipped when already written, split
across torchrun ranks (shard k goes to rank k % WORLD_SIZE)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cd_fast.data import TraceReader
from cd_fast.models import load_causal_lm
from cd_fast.runtime import batched, rank_info, take
from cd_fast.score.scorer import ScoreConfig, Scorer
from cd_fast.score.store import read_manifest, shard_path, write_manifest, write_shard


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
    ranks = rank_info()
    rank, world = ranks.rank, ranks.world_size
    if loaded is None and not config.model:
        raise ValueError("ScoreConfig.model: name the scorer LM (folder, hub id or .gguf)")
    output.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": 1,
        **_input_fingerprint(reader.source.path),
        "model": config.model,
        "shard_size": config.shard_size,
        "window": config.window,
        "overlap": config.overlap,
        "target_template": config.target_template,
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
    # the model loads (or is refused) before a new run's manifest exists: a failed start leaves
    # the folder as it was
    model, tokenizer = loaded or load_causal_lm(config.model, device=config.device)
    scorer = Scorer(model, tokenizer, config)
    if existing is None and rank == 0:
        write_manifest(output, manifest)
    shards = records = 0
    for shard, batch in enumerate(batched(take(reader, limit), config.shard_size)):
        if shard % world == rank and not shard_path(output, shard).exists():
            write_shard(output, shard, scorer.score(batch))
        if on_progress is not None:
            on_progress(len(batch))
        shards, records = shard + 1, records + len(batch)
    write_manifest(output, {**manifest, "total_shards": shards, "records": records})
    return scorer
