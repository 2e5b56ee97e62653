"""Symbol-aware protection: which trace characters carry the "logical core" that token-level
pruning must keep: numbers, operators, LaTeX math (and code), variable names in equations, the
answer. Markdown decoration (bold markers, bullets, headings, rules) is formatting, not a symbol."""

from __future__ import annotations

import re

import numpy as np

from cd_fast.formats import answer_span, boxed_spans
from cd_fast.segment import protected_spans

OPERATORS = frozenset("=+*/^<>×÷−±∓≤≥≠≈≡∝√∑∏∫·∙∘%")
_DECORATION = re.compile(
    r"\*\*+|__+|^[ \t]*(?:[*+-]|#{1,6}|>)(?=[ \t])|^[ \t]*(?:-{3,}|\*{3,}|_{3,})[ \t]*$", re.M
)
_VARIABLE = re.compile(r"(?<![A-Za-z_])[A-Za-z](?:_?\d+|_\{?\w+\}?)?(?![A-Za-z_])")


_OPERATOR_CODES = np.array(sorted(map(ord, OPERATORS)), dtype=np.uint32)
_HYPHEN_IN_WORD = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")  # "double-check": not a minus
_SPACE = re.compile(r"\s+")


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def span_mask(n: int, starts, ends) -> np.ndarray:
    """bool [n]: True inside any [start, end) span (a difference array, no per-span loop)."""
    marks = np.zeros(n + 1, dtype=np.int32)
    np.add.at(marks, np.asarray(starts, dtype=np.int64), 1)
    np.add.at(marks, np.asarray(ends, dtype=np.int64), -1)
    return np.cumsum(marks[:n]) > 0


def _nearest_non_space(text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 [n + 1] each: for position i, the nearest index < i (before) and >= i (after)
    that is not whitespace; -1 / n where there is none."""
    space = span_mask(n, *_span_arrays(_SPACE.finditer(text)))
    index = np.arange(n + 1)
    solid = np.append(~space, True)  # n counts as solid: "none after"
    last = np.maximum.accumulate(np.where(solid, index, -1))  # last solid <= i
    before = np.concatenate([[-1], last[:-1]])  # last solid < i
    after = np.minimum.accumulate(np.where(solid, index, n)[::-1])[::-1]  # first solid >= i
    return before, after


def _span_arrays(matches) -> tuple[list[int], list[int]]:
    spans = [match.span() for match in matches]
    return [a for a, _ in spans], [b for _, b in spans]


def protected_chars(trace: str, answer: str | None = None) -> np.ndarray:
    """bool [len(trace)]: characters that token-level pruning must keep. Vectorised (numpy
    over character codes, regexes for the patterns): no Python loop over characters."""
    n = len(trace)
    if not n:
        return np.zeros(0, dtype=bool)
    codes = _codes(trace)
    operator = np.isin(codes, _OPERATOR_CODES)
    keep = ((codes >= ord("0")) & (codes <= ord("9"))) | operator
    keep |= codes == ord("-")
    keep &= ~span_mask(n, *_span_arrays(_HYPHEN_IN_WORD.finditer(trace)))
    keep &= ~decoration_chars(trace)
    spans = [*protected_spans(trace), *boxed_spans(trace)]  # LaTeX math, code fences, \boxed
    answer_at = answer_span(trace, answer)
    if answer_at is not None:
        spans.append(answer_at)
    # a lone letter next to an operator (whitespace between them allowed): a variable
    starts, ends = map(np.asarray, _span_arrays(_VARIABLE.finditer(trace)))
    if len(starts):
        before, after = _nearest_non_space(trace, n)
        op = np.append(operator, False)  # index -1 and n: no operator there
        variable = op[before[starts]] | op[after[ends]]
        spans += list(zip(starts[variable].tolist(), ends[variable].tolist(), strict=True))
    if spans:
        keep |= span_mask(n, *zip(*spans, strict=True))
    return keep


def decoration_chars(trace: str) -> np.ndarray:
    """bool [len(trace)]: markdown decoration: **bold** and __ markers, bullet and heading
    markers at the start of a line, horizontal rules."""
    return span_mask(len(trace), *_span_arrays(_DECORATION.finditer(trace)))
