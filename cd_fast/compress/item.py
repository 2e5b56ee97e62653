"""What a compression method works with: one record as an `Item`, the `Selection` it keeps,
and the `MethodContext` the Compressor shares with every method and criterion."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cd_fast.compress.roles import StepRoles
from cd_fast.data import Trace
from cd_fast.score.store import RecordScores

if TYPE_CHECKING:
    from cd_fast.compress.config import CompressConfig


@dataclass
class Item:
    """One record of a batch, with what every method may need."""

    trace: Trace  # steps filled in
    count: int  # tokens of the trace under the counting (student's) tokenizer
    offsets: np.ndarray  # [count, 2] character offsets of those tokens
    scores: RecordScores | None  # the scorer's token/step scores (None when not needed)
    answer: str | None  # the final answer the compressed trace must keep
    roles: StepRoles  # the role of each sentence (`cd_fast.compress.roles`)

    @property
    def steps(self) -> np.ndarray:
        return np.asarray(self.trace.steps, dtype=np.int64).reshape(-1, 2)

    @property
    def scored_offsets(self) -> np.ndarray:
        """The tokens a token-level importance scores: the scorer's when scored, else the
        counting tokenizer's."""
        return self.offsets if self.scores is None else self.scores.offsets


@dataclass
class Selection:
    text: str
    spans: list[tuple[int, int]] | None = None  # kept character spans (None: generated text)
    kept_steps: int | None = None
    dropped: list[dict[str, Any]] | None = None  # --explain: the dropped spans, scores, reasons


@dataclass
class MethodContext:
    """What the Compressor shares with methods and criteria: the config, token counting, the
    scorer and the rewriter (when the run has them), and the seconds spent per phase."""

    config: CompressConfig
    count: Callable[[list[str]], list[int]]
    scorer: Any = None
    rewriter: Any = None
    seconds: dict[str, float] | None = None

    def rng(self, record_id: str) -> np.random.Generator:
        """The random criterion's generator of one record (seed + record id)."""
        return np.random.default_rng([self.config.seed, zlib.crc32(record_id.encode())])
