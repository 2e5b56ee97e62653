"""Token-budget step planning: which samples share each packed, padding-free batch.

Best-fit decreasing inside shuffled windows: every epoch permutes the samples from (seed, epoch),
cuts the permutation into windows of about `window_steps` budgets of tokens, packs each window
best-fit decreasing (each sample into the fullest step it still fits), then shuffles the steps.
Windows keep epochs random while BFD keeps the fill near 100%; only a window's last step or two
run partly empty. Deterministic in (lengths, budget, seed, epoch); resumable from (epoch, step).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cd_fast.kernels import StaticShape

OVERLONG_POLICIES = ("truncate", "split")


@dataclass(frozen=True)
class Piece:
    """Tokens [start, stop) of sample `index`: a whole sample unless it was split or truncated."""

    index: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def _best_fit_decreasing(
    order: np.ndarray, lengths: np.ndarray, budget: int, rng: np.random.Generator
) -> list[list[int]]:
    # Stable sort of a random permutation: equal lengths land in random order.
    shuffled = order[rng.permutation(order.size)]
    by_size = shuffled[np.argsort(-lengths[shuffled], kind="stable")]
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining tokens, bin id), ascending
    for item in by_size.tolist():
        need = int(lengths[item])
        slot = bisect.bisect_left(free, (need, -1))
        if slot < len(free):
            remaining, bin_id = free.pop(slot)
            bins[bin_id].append(item)
            remaining -= need
        else:
            bin_id = len(bins)
            bins.append([item])
            remaining = budget - need
        if remaining > 0:
            bisect.insort(free, (remaining, bin_id))
    return bins


class StepPlanner:
    """Plans packed steps under a token budget, epoch after epoch, resumably.

    Args:
        lengths: tokens per sample.
        max_tokens_per_step: the budget; no step ever holds more tokens.
        seed: epoch e is planned from (seed, e).
        overlong: samples longer than the budget are "truncate"d to it or "split" into
            budget-sized pieces (counted in `truncated` / `split`).
        window_steps: budgets of tokens per shuffling window (larger: fuller, less random).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens_per_step: int,
        seed: int = 0,
        overlong: str = "truncate",
        window_steps: int = 256,
    ):
        if max_tokens_per_step <= 0:
            raise ValueError(f"max_tokens_per_step must be > 0, got {max_tokens_per_step}")
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
        lengths_np = np.asarray(lengths, dtype=np.int64)
        if lengths_np.ndim != 1 or (lengths_np <= 0).any():
            raise ValueError("lengths must be a 1-D sequence of positive token counts")
        self.budget = int(max_tokens_per_step)
        self.seed = int(seed)
        self.window_steps = int(window_steps)
        self.truncated = self.split = 0
        self.pieces: list[Piece] = []
        for index, length in enumerate(lengths_np.tolist()):
            if length <= self.budget:
                self.pieces.append(Piece(index, 0, length))
            elif overlong == "truncate":
                self.truncated += 1
                self.pieces.append(Piece(index, 0, self.budget))
            else:
                self.split += 1
                for start in range(0, length, self.budget):
                    self.pieces.append(Piece(index, start, min(start + self.budget, length)))
        self.piece_lengths = np.array([p.length for p in self.pieces], dtype=np.int64)
        self.epoch = 0
        self.step = 0

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """Piece indices per step for `epoch` (piece i is sample i when nothing was split)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.pieces))
        window_tokens = self.window_steps * self.budget
        cumulative = np.cumsum(self.piece_lengths[order])
        cuts = np.arange(window_tokens, int(cumulative[-1]) + window_tokens, window_tokens)
        steps: list[list[int]] = []
        start = 0
        for end in [*np.searchsorted(cumulative, cuts).tolist(), order.size]:
            if end > start:
                window = order[start:end]
                steps += _best_fit_decreasing(window, self.piece_lengths, self.budget, rng)
                start = end
        return [steps[i] for i in rng.permutation(len(steps))]

    def fill(self, plan: list[list[int]]) -> float:
        """Mean fraction of the budget used per step."""
        used = sum(int(self.piece_lengths[step].sum()) for step in plan)
        return used / (len(plan) * self.budget) if plan else 0.0

    def __iter__(self) -> Iterator[list[Piece]]:
        """Steps from the current (epoch, step) on, forever; advances the position."""
        while True:
            plan = self.epoch_plan(self.epoch)
            while self.step < len(plan):
                pieces = [self.pieces[i] for i in plan[self.step]]
                self.step += 1
                yield pieces
            self.epoch += 1
            self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "budget": self.budget}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["budget"] != self.budget:
            raise ValueError(
                f"planner state was saved with seed={state['seed']}, budget={state['budget']}; "
                f"this planner has seed={self.seed}, budget={self.budget}"
            )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def plan_steps(
    lengths: Sequence[int], max_tokens_per_step: int, seed: int = 0, overlong: str = "truncate"
) -> list[list[int]]:
    """Sample indices per step for one epoch (overlong samples truncated to the budget)."""
    if overlong != "truncate":
        raise ValueError("plan_steps returns sample indices; use StepPlanner for overlong='split'")
    return StepPlanner(lengths, max_tokens_per_step, seed=seed).epoch_plan(0)


def split_step(pieces: Sequence[Piece], parts: int) -> list[list[Piece]]:
    """Deal one step's pieces into `parts` micro-batches of near-equal tokens (longest first,
    each to the lightest part); deterministic. A part may be empty when pieces are few."""
    loads = [(0, part) for part in range(parts)]
    out: list[list[Piece]] = [[] for _ in range(parts)]
    for piece in sorted(pieces, key=lambda p: (-p.length, p.index, p.start)):
        load, part = loads.pop(0)
        out[part].append(piece)
        bisect.insort(loads, (load + piece.length, part))
    return out


def static_shape(planner: StepPlanner, parts: int, total_steps: int) -> StaticShape:
    """One shape that every micro-batch of a run fits (kernels.StaticShape), from the run's own
    step plans: the most tokens and pieces any micro-batch holds (tokens a multiple of 8), the
    longest piece as max_seqlen, plus room for the padding pieces (sequences a multiple of 8)."""
    longest = int(planner.piece_lengths.max())
    tokens, most, steps, epoch = 1, 1, 0, 0
    while steps < total_steps:
        plan = planner.epoch_plan(epoch)
        for step in plan[: total_steps - steps]:
            for part in split_step([planner.pieces[i] for i in step], parts):
                tokens = max(tokens, sum(p.length for p in part))
                most = max(most, len(part))
        steps, epoch = steps + len(plan), epoch + 1
    tokens = -(-tokens // 8) * 8
    sequences = most + -(-tokens // longest)
    return StaticShape(tokens=tokens, sequences=-(-sequences // 8) * 8, max_seqlen=longest)
