"""The units step pruning keeps or drops, and where the answer sits among them.

Units, at the granularity a user picks:

- ``sentence``: the segmenter's steps (``cd_fast.segment``);
- ``paragraph``: the text between two line breaks (a blank line or a single line break ends a
  unit, never inside LaTeX math or a code fence; a paragraph keeps its discourse marker,
  "Wait, ..." at its head).

At either granularity a unit that asks a question ("maybe I should multiply here instead?") is
joined to the unit that answers it, so a selection keeps both or drops both. Units are int64
[k, 2] arrays of [start, end) character offsets covering the text.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from cd_fast.formats import answer_position
from cd_fast.segment import protected_spans

GRANULARITIES = ("paragraph", "sentence")
_LINE_BREAKS = re.compile(r"[ \t]*\n\s*")
_QUESTION_END = re.compile(r"\?[\"')\]*\u201d\u2019]*\s*$")


def paragraph_steps(text: str) -> np.ndarray:
    """Units ending at each line break (a blank line or a single one) outside LaTeX math and
    code fences, the whitespace after a unit belonging to it: [k, 2] offsets covering `text`."""
    inside = np.zeros(len(text) + 1, dtype=bool)
    for a, b in protected_spans(text):
        inside[a:b] = True
    starts = [0]
    for match in _LINE_BREAKS.finditer(text):
        if not inside[match.start()] and match.end() < len(text) and match.start() > starts[-1]:
            starts.append(match.end())
    ends = [*starts[1:], len(text)]
    return np.asarray(list(zip(starts, ends, strict=True)), dtype=np.int64).reshape(-1, 2)


def bind_questions(text: str, steps: np.ndarray) -> np.ndarray:
    """`steps` with each unit that ends in a question mark joined to the unit after it."""
    if len(steps) < 2:
        return steps
    out: list[list[int]] = []
    joining = False
    for a, b in steps.tolist():
        if joining:
            out[-1][1] = b
        else:
            out.append([a, b])
        joining = bool(_QUESTION_END.search(text[out[-1][0] : out[-1][1]]))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def step_units(text: str, steps: np.ndarray, granularity: str) -> np.ndarray:
    """The units step pruning selects among, at `granularity` (see the module doc)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "paragraph":
        steps = paragraph_steps(text)
    return bind_questions(text, np.asarray(steps, dtype=np.int64).reshape(-1, 2))


def step_at(units: np.ndarray, position: int) -> int:
    """Index of the unit holding character `position`."""
    return int(min(np.searchsorted(units[:, 1], position, side="right"), len(units) - 1))


def answer_units(text: str, units: np.ndarray, answer: str | None) -> np.ndarray:
    """bool [k]: the units stating the final answer (its last statement, any \\boxed{})."""
    marks = np.zeros(len(units), dtype=bool)
    if not len(units):
        return marks
    at = answer_position(text, answer)
    if at is not None:
        marks[step_at(units, at)] = True
    for i, (a, b) in enumerate(units.tolist()):
        if "\\boxed" in text[a:b]:
            marks[i] = True
    return marks


def split_out(units: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """`units` with each of `spans` made a unit of its own (the rest of a unit it was cut from
    stays a unit before and after it)."""
    bounds = set(units.ravel().tolist()) | set(np.asarray(spans).ravel().tolist())
    pairs = list(itertools.pairwise(sorted(bounds)))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass
class AblationGroups:
    spans: np.ndarray  # [g, 2] character offsets of the groups ablated together
    of_unit: np.ndarray  # [k] the group of each unit


def ablation_groups(units: np.ndarray, limit: int) -> AblationGroups:
    """At most `limit` runs of consecutive units of about equal character length, so
    answer-delta costs at most limit + 1 forward passes of the trace whatever its length."""
    k = len(units)
    if k <= limit:
        return AblationGroups(units, np.arange(k))
    lengths = np.cumsum(units[:, 1] - units[:, 0])
    of_unit = np.minimum((lengths - 1) * limit // max(int(lengths[-1]), 1), limit - 1)
    of_unit = np.unique(of_unit, return_inverse=True)[1]
    spans = np.array(
        [[units[of_unit == g][0, 0], units[of_unit == g][-1, 1]] for g in range(of_unit.max() + 1)]
    )
    return AblationGroups(spans, of_unit)
