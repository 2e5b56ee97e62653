"""Importance criteria, one registry: what each one needs and how it scores a record.

A criterion scores tokens (token pruning keeps words by it), units (step pruning keeps units
by it), or both. What a run must provide for it:

  nothing  value-flow (the units the answer's numbers flow through), role and
           role+value-flow (step roles, `cd_fast.compress.roles`), random
  scores   surprisal, entropy, role+surprisal: the scorer LM's token scores (--scores DIR, or
           --scorer to compute them); a unit aggregates its tokens' scores (--aggregation)
  scorer   answer-delta: the scorer LM itself (each unit's ablation is a forward pass)

The role criteria rank units by what their sentences do: the conclusion and deduction first, then
initialising (the question is in the prompt already), exploration and verification, repeated
conclusions, uncertainty, and last backtracking and the deductions a backtrack abandoned
(`ROLE_RANK`). Within a rank the tie-breaker orders units: for `role` the tagger's confidence (a
deduction that reaches a new value or draws an inference before one that only talks), for
`role+X` criterion X (as a rank within the record).

`METHOD_CRITERIA` says which criteria each method accepts, its default first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cd_fast.compress.backbone import value_flow
from cd_fast.compress.item import Item, MethodContext
from cd_fast.compress.roles import (
    BACKTRACKING,
    CONCLUSION,
    DEDUCTION,
    EXPLORATION,
    INITIALISING,
    UNCERTAINTY,
    VERIFICATION,
)
from cd_fast.compress.units import ablation_groups

NOTHING, SCORES, SCORER = "nothing", "scores", "scorer"

TokenImportance = Callable[[Item, MethodContext], np.ndarray]
"""float [n] over `item.scored_offsets`."""
UnitImportance = Callable[[Item, np.ndarray, np.ndarray, MethodContext], np.ndarray]
"""float [k] over the units [k, 2], given which units must stay (bool [k])."""


@dataclass(frozen=True)
class Criterion:
    name: str
    needs: str  # NOTHING | SCORES | SCORER
    token: TokenImportance | None = None
    unit: UnitImportance | None = None
    aggregated: bool = False  # a unit's score is its tokens' sum, mean or max
    below_one: str | None = None  # --explain reason of a dropped unit scoring under 1

    def runnable(self, has_scores: bool, has_scorer: bool) -> bool:
        """Whether a run with precomputed scores and/or a scorer LM can compute it."""
        if self.needs == SCORER:
            return has_scorer
        return self.needs == NOTHING or has_scores or has_scorer

    def label(self, aggregation: str) -> str:
        """The criterion as --explain reasons and summaries name it."""
        return f"{self.name} ({aggregation})" if self.aggregated else self.name


def _random_tokens(item: Item, context: MethodContext) -> np.ndarray:
    return context.rng(item.trace.id).random(len(item.scored_offsets))


def _random_units(item, units, must_keep, context: MethodContext) -> np.ndarray:
    return context.rng(item.trace.id).random(len(units))


def _value_flow(item, units, must_keep, context) -> np.ndarray:
    return value_flow(item.trace.trace, units, must_keep)[0]


def _token_score(name: str) -> tuple[TokenImportance, UnitImportance]:
    """The scorer's per-token `name` scores, and their per-unit aggregation."""

    def tokens(item: Item, context: MethodContext) -> np.ndarray:
        return getattr(item.scores, name)

    def units(item: Item, units: np.ndarray, must_keep, context: MethodContext) -> np.ndarray:
        return item.scores.for_steps(units)[f"step_{name}_{context.config.aggregation}"]

    return tokens, units


def _answer_delta(item, units: np.ndarray, must_keep, context: MethodContext) -> np.ndarray:
    """How much the answer's loss rises without each unit (ablated in at most
    --max-ablations groups)."""
    if not item.answer:
        return np.zeros(len(units))  # nothing to condition on: order by position
    if context.scorer is None:
        raise ValueError("criterion answer-delta runs the scorer LM: pass --scorer")
    tic = time.perf_counter()
    groups = ablation_groups(units, context.config.max_ablations)
    delta = context.scorer.answer_delta(item.trace, groups.spans, item.answer)
    context.seconds["scoring"] += time.perf_counter() - tic
    return np.asarray(delta, dtype=np.float64)[groups.of_unit]


ROLE_RANK = {
    CONCLUSION: 6.0,
    DEDUCTION: 5.0,
    INITIALISING: 3.0,
    EXPLORATION: 2.0,
    VERIFICATION: 2.0,
    UNCERTAINTY: 1.0,
    BACKTRACKING: 0.0,
}
ABANDONED_RANK = 0.5  # a deduction a later backtrack revised
REPEATED_CONCLUSION_RANK = 1.5  # "so the answer is 9" once more
TIE_WEIGHT = 0.9  # a tie-breaker in [0, 1] moves a unit less than one rank


def role_ranks(item: Item) -> np.ndarray:
    """float [n]: each sentence's rank by its role (see the module doc)."""
    roles = item.roles
    rank = np.array([ROLE_RANK[r] for r in roles.role.tolist()])
    rank[roles.abandoned] = ABANDONED_RANK
    conclusions = np.flatnonzero(roles.role == CONCLUSION)
    rank[conclusions[1:]] = REPEATED_CONCLUSION_RANK  # the answer's own unit is kept anyway
    return rank


def _within_record(values: np.ndarray) -> np.ndarray:
    """`values` as ranks scaled to [0, 1] (ties share the lower rank)."""
    if len(values) < 2:
        return np.zeros(len(values))
    order = np.searchsorted(np.sort(values), values, side="left")
    return order / (len(values) - 1)


def _role(tie_breaker: UnitImportance | None) -> UnitImportance:
    """A unit's role rank (the character-weighted mean of its sentences'), plus a tie-breaker."""

    def units_(item: Item, units: np.ndarray, must_keep, context: MethodContext) -> np.ndarray:
        roles = item.roles
        base = roles.of_units(units, role_ranks(item))
        own = roles.of_units(units, roles.confidence)
        if tie_breaker is None:
            return base + TIE_WEIGHT * own
        other = _within_record(np.asarray(tie_breaker(item, units, must_keep, context), float))
        return base + TIE_WEIGHT * (0.9 * other + 0.1 * own)

    return units_


_surprisal_tokens, _surprisal_units = _token_score("surprisal")
_entropy_tokens, _entropy_units = _token_score("entropy")

CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "value-flow",
            NOTHING,
            unit=_value_flow,
            below_one="off the value chain: no later kept step or the answer uses its values",
        ),
        Criterion("surprisal", SCORES, _surprisal_tokens, _surprisal_units, aggregated=True),
        Criterion("entropy", SCORES, _entropy_tokens, _entropy_units, aggregated=True),
        Criterion("answer-delta", SCORER, unit=_answer_delta),
        Criterion("role", NOTHING, unit=_role(None)),
        Criterion("role+value-flow", NOTHING, unit=_role(_value_flow)),
        Criterion("role+surprisal", SCORES, unit=_role(_surprisal_units), aggregated=True),
        Criterion("random", NOTHING, _random_tokens, _random_units),
    )
}

METHOD_CRITERIA: dict[str, tuple[str, ...]] = {
    "token": tuple(name for name, c in CRITERIA.items() if c.token is not None),
    "step": tuple(name for name, c in CRITERIA.items() if c.unit is not None),
    "truncate": (),
    "rewrite": (),
}
"""Every method, and the criteria it accepts (the first is its default)."""
