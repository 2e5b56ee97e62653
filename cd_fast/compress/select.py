"""Choosing what to keep: steps by importance under a token budget, the head of a
trace, and turning kept character spans back into clean text."""

from __future__ import annotations

import bisect
import re

import numpy as np
import regex

_GRAPHEME = regex.compile(r"\X")
_NUMERIC = re.compile(r"^-?[\d,]*\.?\d+(?:/\d+)?$")


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, with touching spans joined."""
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def grapheme_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` widened to whole grapheme clusters (an emoji ZWJ sequence, a letter with its
    combining marks, a flag), so a kept token never carries half of what a reader sees as one
    character."""
    if text.isascii():
        return spans
    bounds = [match.start() for match in _GRAPHEME.finditer(text)] + [len(text)]
    return [
        (bounds[bisect.bisect_right(bounds, start) - 1], bounds[bisect.bisect_left(bounds, end)])
        for start, end in spans
    ]


def join_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """The kept character spans of `text` (widened to whole grapheme clusters), in order. Where
    text was cut out between two spans, a newline stands in if the cut held one and neither side
    already breaks the line there (dropped paragraphs leave no runs of blank lines), a space if
    the cut held whitespace and neither side has any (so words never fuse), nothing otherwise
    (text written without spaces, such as Chinese or Japanese, never gains one)."""
    pieces: list[str] = []
    previous_end = None
    for start, end in merge_spans(grapheme_spans(text, spans)):
        piece = text[start:end]
        if previous_end is not None and start > previous_end:
            gap = text[previous_end:start]
            if "\n" in gap:
                if not pieces[-1].endswith("\n") and not piece.startswith("\n"):
                    pieces.append("\n")
                piece = piece.lstrip(" \t")
            elif (
                any(c.isspace() for c in gap)
                and not text[previous_end - 1].isspace()
                and not text[start].isspace()
            ):
                pieces.append(" ")
        pieces.append(piece)
        previous_end = end
    return "".join(pieces)


def token_spans(offsets: np.ndarray, keep: np.ndarray) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for (a, b), k in zip(offsets, keep, strict=True) if k]


def select_steps(
    importance: np.ndarray, step_tokens: np.ndarray, must_keep: np.ndarray, budget: int
) -> np.ndarray:
    """bool mask over steps: the must-keep steps, then steps in falling importance that still fit
    the token budget (a step that does not fit is passed over for smaller ones). The first step
    that does not fit is taken all the same when that lands nearer the budget than leaving it
    (a carried budget evens the overshoot out over the next records), and so is it when
    nothing else was kept, so a trace never comes out empty."""
    mask = must_keep.copy()
    used = int(step_tokens[mask].sum())
    candidates = np.flatnonzero(~mask)
    nearest = None
    for step in candidates[np.lexsort((candidates, -importance[candidates]))]:
        size = int(step_tokens[step])
        if used + size <= budget:
            mask[step] = True
            used += size
        elif nearest is None:
            nearest = step
    nearer = nearest is not None and used + step_tokens[nearest] - budget < budget - used
    if nearer or (nearest is not None and not mask.any()):  # never an empty trace
        mask[nearest] = True
    return mask


def head_chars(offsets: np.ndarray, keep_tokens: int) -> int:
    """Character length of the first `keep_tokens` tokens."""
    if keep_tokens <= 0 or not len(offsets):
        return 0
    return int(offsets[min(keep_tokens, len(offsets)) - 1, 1])


def normalise(text: str) -> str:
    return re.sub(r"[\s$]|\\[,!;: ]", "", text).replace("\\left", "").replace("\\right", "")


def answer_span(text: str, answer: str | None) -> tuple[int, int] | None:
    """Character span of the last place `text` states `answer` (numbers match whole, so 72 is
    not found inside 172 or 7.25, and thousands separators are ignored), or None."""
    if not answer or not answer.strip():
        return None
    answer = answer.strip()
    if _NUMERIC.match(answer):
        digits = answer.replace(",", "")
        number = re.compile(r"(?<![\d.])" + ",?".join(map(re.escape, digits)) + r"(?!\d|\.\d)")
        matches = list(number.finditer(text))
        return matches[-1].span() if matches else None
    at = text.rfind(answer)
    return (at, at + len(answer)) if at >= 0 else None


def answer_position(text: str, answer: str | None) -> int | None:
    """Where the last statement of `answer` in `text` starts (see `answer_span`), or None."""
    span = answer_span(text, answer)
    return span[0] if span else None


def contains_answer(text: str, answer: str | None) -> bool:
    """True when `text` states `answer`, literally or up to spacing and LaTeX spacing."""
    if not answer or not answer.strip():
        return False
    if answer_position(text, answer) is not None:
        return True
    target = normalise(answer)
    return bool(target) and not _NUMERIC.match(answer.strip()) and target in normalise(text)
