"""The model-free value-flow criterion over units (`cd_fast.compress.units`), and token
pruning's priority levels.

Value flow (no model): each number a unit uses has a *source*, the nearest earlier unit that
holds it and does not merely restate an earlier one. A unit restates when its numbers, in
order, run inside an earlier unit's and none of them has been produced since (a unit produces
its last number): "let me check: 9 + 8 is 17" after "9 + 8 = 17" and "17 * 2 = 34", but not a
later step that reuses the numbers after one of them was produced anew ("6 + 3 = 9",
"9 - 3 = 6", then "6 + 3 = 9" again is a new step). The
backbone is the dependency chain of the computation: the units stating the final answer are on
it, and so is the source of every number a unit on the chain uses. A unit's importance is

    importance_i = on_chain_i + 0.5 * checks_i + 0.5 * fan_out_i / (1 + max_j fan_out_j)

where checks_i is 1 for a unit off the chain whose numbers are all the chain's (a double-check,
a recap: "Let me make sure: 5 - 4 = 1") and fan_out_i counts the later units that take a number
from unit i. So the whole chain ranks above every unit off it; off it, the checks of the chain
rank above the units with other numbers or none (planning, restating the question, abandoned
ideas); units that feed many others rank first within each tier (students learn from the
checks: bench/results/demo-tiny-cpu.md).
"""

from __future__ import annotations

import re

import numpy as np

from cd_fast.formats import boxed_spans
from cd_fast.score.protect import decoration_chars, protected_chars

_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def number_value(literal: str) -> str:
    """A number literal's value as a comparable string: 1,200 == 1200, 3.50 == 3.5."""
    value = literal.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value.lstrip("0") or "0"


def numbers(text: str) -> list[re.Match]:
    """The number literals of `text` (not digits inside words such as x2 or v1.5)."""
    return list(_NUMBER.finditer(text))


def numbers_in(text: str) -> list[str]:
    """The literals `numbers` finds, as strings (cheaper where positions are not needed)."""
    return _NUMBER.findall(text)


def _restates(
    values: tuple[str, ...], ordered: list[tuple[str, ...]], new: list[int], produced: dict
) -> bool:
    """Whether `values` (a unit's numbers in order) run contiguously inside an earlier new unit's
    (`new`: their indices) and none of them was produced since (`produced`: value -> the last
    new unit it was the result of)."""
    n = len(values)
    for unit in reversed(new):
        other = ordered[unit]
        if any(values == other[i : i + n] for i in range(len(other) - n + 1)):
            return all(produced.get(v, -1) <= unit for v in values)
    return False


def value_flow(text: str, steps: np.ndarray, answer_units: np.ndarray) -> tuple[np.ndarray, ...]:
    """(importance float [k], on_chain bool [k]) of each unit (see the module doc);
    `answer_units` (bool [k]) seeds the chain."""
    k = len(steps)
    ordered = [
        tuple(number_value(m.group()) for m in numbers(text[a:b])) for a, b in steps.tolist()
    ]
    # the source of a value used in unit j: the nearest earlier unit holding it that is not a
    # restatement ("let me check: 9 + 8 is 17"), else the nearest earlier unit holding it
    latest: dict[str, int] = {}
    latest_new: dict[str, int] = {}
    produced: dict[str, int] = {}
    new_units: list[int] = []
    sources: list[set[int]] = []
    for unit, values in enumerate(ordered):
        sources.append({latest_new.get(v, latest.get(v, -1)) for v in values} - {-1})
        new = bool(values) and not _restates(values, ordered, new_units, produced)
        for value in values:
            latest[value] = unit
            if new:
                latest_new[value] = unit
        if new:
            new_units.append(unit)
            produced[values[-1]] = unit
    fan_out = np.zeros(k)
    for found in sources:
        fan_out[list(found)] += 1
    chain = np.asarray(answer_units, dtype=bool).copy()
    for unit in range(k - 1, -1, -1):
        if chain[unit]:
            chain[list(sources[unit])] = True
    chain_values = {v for unit in np.flatnonzero(chain).tolist() for v in ordered[unit]}
    checks = np.array([bool(v) and set(v) <= chain_values for v in ordered], dtype=bool) & ~chain
    importance = chain + 0.5 * checks + 0.5 * fan_out / (1 + (fan_out.max() if k else 0))
    return importance, chain


# Token pruning's priority order, highest first (see `token_priority`).
ANSWER, BACKBONE, REST, DECORATION = 3, 2, 1, 0


def token_priority(
    text: str, offsets: np.ndarray, answer_at: tuple[int, int] | None, chain_spans: np.ndarray
) -> np.ndarray:
    """int8 [n_tokens]: ANSWER for the final answer's tokens (its last statement and any
    \\boxed{}), BACKBONE for the numbers and operators inside the value-flow chain's units,
    DECORATION for markdown decoration, REST for everything else (words, the symbols off the
    chain). A token takes the highest level of its characters."""
    level = np.full(len(text), REST, dtype=np.int8)
    level[decoration_chars(text)] = DECORATION
    on_chain = np.zeros(len(text), dtype=bool)
    for a, b in np.asarray(chain_spans).reshape(-1, 2).tolist():
        on_chain[a:b] = True
    level[protected_chars(text) & on_chain] = BACKBONE
    for a, b in [*boxed_spans(text), *([answer_at] if answer_at else [])]:
        level[a:b] = ANSWER
    if not len(offsets):
        return np.zeros(0, dtype=np.int8)
    starts, ends = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0])
    priority = np.zeros(len(offsets), dtype=np.int8)
    for threshold in (REST, BACKBONE, ANSWER):
        prefix = np.concatenate([[0], np.cumsum(level >= threshold)])
        priority += (prefix[ends] - prefix[starts]) > 0
    return priority
