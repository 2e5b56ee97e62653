"""The score store: Parquet shards of per-record token and step scores plus a manifest.

Layout of an output folder: `manifest.json` (model, input, shard size, totals) and
`shard-00000.parquet`, ... (each written atomically, one row per record). A shard that exists is
complete, which is what `cdfast score --resume` relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cd_fast.data import AtomicWriter
from cd_fast.score.steps import step_scores

STEP_FIELDS = tuple(
    f"step_{s}_{r}" for s in ("surprisal", "entropy") for r in ("sum", "mean", "max")
)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("token_start", pa.list_(pa.int32())),
        ("token_end", pa.list_(pa.int32())),
        ("surprisal", pa.list_(pa.float32())),
        ("entropy", pa.list_(pa.float32())),
        ("step_start", pa.list_(pa.int64())),
        ("step_end", pa.list_(pa.int64())),
        *[(name, pa.list_(pa.float32())) for name in STEP_FIELDS],
    ]
)


@dataclass
class RecordScores:
    """Scores of one trace: per token (offsets are character offsets into `trace`) and per step."""

    id: str
    token_ids: np.ndarray  # int32 [n]
    offsets: np.ndarray  # int32 [n, 2]
    surprisal: np.ndarray  # float32 [n], natural log
    entropy: np.ndarray  # float32 [n]
    steps: np.ndarray  # int64 [k, 2]
    step_scores: dict[str, np.ndarray]  # STEP_FIELDS -> float32 [k]

    def for_steps(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        """The step scores of `steps`: the stored ones when they were computed for these same
        steps, else reduced again from the token scores (steps from another segmentation)."""
        steps = np.asarray(steps, dtype=np.int64).reshape(-1, 2)
        if np.array_equal(steps, np.asarray(self.steps, dtype=np.int64).reshape(-1, 2)):
            return self.step_scores
        return step_scores(self.offsets, steps, self.surprisal, self.entropy)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "token_ids": self.token_ids,
            "token_start": self.offsets[:, 0],
            "token_end": self.offsets[:, 1],
            "surprisal": self.surprisal,
            "entropy": self.entropy,
            "step_start": self.steps[:, 0],
            "step_end": self.steps[:, 1],
            **self.step_scores,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RecordScores:
        def array(name: str, dtype: Any) -> np.ndarray:
            return np.asarray(row[name], dtype=dtype)

        return cls(
            id=row["id"],
            token_ids=array("token_ids", np.int32),
            offsets=np.stack([array("token_start", np.int32), array("token_end", np.int32)], 1),
            surprisal=array("surprisal", np.float32),
            entropy=array("entropy", np.float32),
            steps=np.stack([array("step_start", np.int64), array("step_end", np.int64)], 1),
            step_scores={name: array(name, np.float32) for name in STEP_FIELDS},
        )


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.parquet"


def write_shard(folder: Path, shard: int, records: list[RecordScores]) -> None:
    rows = [r.row() for r in records]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with AtomicWriter(shard_path(folder, shard), "wb") as handle:
        pq.write_table(table, handle, compression="zstd")


MANIFEST = "manifest.json"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with AtomicWriter(folder / MANIFEST) as handle:
        json.dump(manifest, handle, indent=1)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class ScoreStore:
    """Read the output of `cdfast score`: iterate records or look them up by id."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise FileNotFoundError(f"{self.folder}: no manifest.json (not a cdfast score output)")
        self.manifest = manifest
        total = manifest.get("total_shards")
        present = sorted(self.folder.glob("shard-*.parquet"))
        if total is not None and len(present) != total:
            raise ValueError(
                f"{self.folder}: {len(present)} of {total} shards present; finish it with "
                "`cdfast score ... --resume`"
            )
        self.shards = present

    def __iter__(self) -> Iterator[RecordScores]:
        for path in self.shards:
            for row in pq.read_table(path).to_pylist():
                yield RecordScores.from_row(row)

    def by_id(self) -> dict[str, RecordScores]:
        return {record.id: record for record in self}
