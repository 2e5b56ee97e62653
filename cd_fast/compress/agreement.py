"""Criterion agreement, as arXiv 2606.21704 reports it: at each budget, the mean over traces of
the Jaccard overlap |A ∩ B| / |A ∪ B| between the steps kept by criterion A and by criterion B.
Each trace keeps round(budget x its tokens) on its own (no budget carried between traces), so
the criteria are compared at the same ratio per trace."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import numpy as np

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.criteria import CRITERIA, METHOD_CRITERIA
from cd_fast.compress.engine import Compressor
from cd_fast.data import Trace

logger = logging.getLogger(__name__)


def runnable_criteria(has_scores: bool, has_scorer: bool) -> list[str]:
    """The step criteria this run can compute (`Criterion.needs`); the others are named in a
    log line."""
    usable, left_out = [], []
    for name in METHOD_CRITERIA["step"]:
        (usable if CRITERIA[name].runnable(has_scores, has_scorer) else left_out).append(name)
    if left_out:
        logger.warning(
            "criteria %s left out of the comparison: they need %s",
            ", ".join(left_out),
            "--scores or --scorer (answer-delta: --scorer)",
        )
    return usable


def kept_units(
    engine: Compressor, traces: list[Trace], budgets: list[float]
) -> dict[float, list[set[int]]]:
    """Per budget, per trace, the indices of the units the engine's step criterion keeps."""
    items = engine.items(traces)
    views = engine.method.prepare(items, np.zeros(len(items), dtype=np.int64))
    kept: dict[float, list[set[int]]] = {b: [] for b in budgets}
    for item, view in zip(items, views, strict=True):
        starts = {int(a): i for i, a in enumerate(view.units[:, 0])}
        for budget in budgets:
            selection = engine.method.select(item, view, round(budget * item.count))
            kept[budget].append({starts[a] for a, _ in selection.spans})
    return kept


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def criteria_agreement(
    traces: list[Trace],
    config: CompressConfig,
    counter: Any,
    scorer: Any = None,
    scores: dict[str, Any] | None = None,
    budgets: tuple[float, ...] = (0.1, 0.3, 0.5),
    criteria: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of (budget, criterion a, criterion b, mean Jaccard, traces) for every pair of step
    criteria, at the config's granularity and aggregation."""
    criteria = criteria or runnable_criteria(scores is not None, scorer is not None)
    kept = {}
    for criterion in criteria:
        step = dataclasses.replace(config, method="step", criterion=criterion, explain=False)
        kept[criterion] = kept_units(Compressor(step, counter, scorer, scores), traces, budgets)
    rows = []
    for budget in budgets:
        for a, b in itertools.combinations(criteria, 2):
            overlaps = [
                jaccard(x, y) for x, y in zip(kept[a][budget], kept[b][budget], strict=True)
            ]
            rows.append(
                {
                    "budget": budget,
                    "a": a,
                    "b": b,
                    "jaccard": round(float(np.mean(overlaps)), 3),
                    "traces": len(overlaps),
                }
            )
    return rows


def agreement_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per criterion pair, one column per budget."""
    budgets = sorted({r["budget"] for r in rows})
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows))
    value = {(r["a"], r["b"], r["budget"]): r["jaccard"] for r in rows}
    header = "| criteria | " + " | ".join(f"budget {b:g}" for b in budgets) + " |"
    lines = [header, "|---|" + "---|" * len(budgets)]
    for a, b in pairs:
        cells = " | ".join(f"{value[a, b, budget]:.3f}" for budget in budgets)
        lines.append(f"| {a} / {b} | {cells} |")
    return "\n".join(lines)
