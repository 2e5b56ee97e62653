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


def protected_chars(trace: str, answer: str | None = None) -> np.ndarray:
    """bool [len(trace)]: characters that token-level pruning must keep."""
    n = len(trace)
    keep = np.zeros(n, dtype=bool)
    if not n:
        return keep
    codes = np.frombuffer(trace.encode("utf-32-le"), dtype=np.uint32)
    keep |= (codes >= ord("0")) & (codes <= ord("9"))
    for i, ch in enumerate(trace):
        if ch in OPERATORS:
            keep[i] = True
        elif ch == "-":  # minus, not a hyphen inside a word ("double-check")
            left = trace[i - 1] if i else " "
            right = trace[i + 1] if i + 1 < n else " "
            keep[i] = not (left.isalpha() and right.isalpha())
    keep &= ~decoration_chars(trace)
    for start, end in protected_spans(trace):  # LaTeX math and code fences
        keep[start:end] = True
    for match in _VARIABLE.finditer(trace):  # a lone letter next to an operator: a variable
        before, after = match.start() - 1, match.end()
        while before >= 0 and trace[before].isspace():
            before -= 1
        while after < n and trace[after].isspace():
            after += 1
        if (before >= 0 and trace[before] in OPERATORS) or (
            after < n and trace[after] in OPERATORS
        ):
            keep[match.start() : match.end()] = True
    for start, end in boxed_spans(trace):
        keep[start:end] = True
    answer_at = answer_span(trace, answer)
    if answer_at is not None:
        keep[answer_at[0] : answer_at[1]] = True
    return keep


def decoration_chars(trace: str) -> np.ndarray:
    """bool [len(trace)]: markdown decoration: **bold** and __ markers, bullet and heading
    markers at the start of a line, horizontal rules."""
    marks = np.zeros(len(trace), dtype=bool)
    for match in _DECORATION.finditer(trace):
        marks[match.start() : match.end()] = True
    return marks
