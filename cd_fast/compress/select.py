"""Choosing what to keep: steps by importance under a token budget, the head of a trace, the
words tokens make up, and turning kept character spans back into clean text (and dropped ones
into --explain entries)."""

from __future__ import annotations

import bisect
import re
from typing import Any

import numpy as np
import regex

from cd_fast.score.protect import decoration_chars

_GRAPHEME = regex.compile(r"\X")
_WORD = re.compile(r"\S+")


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


def word_groups(text: str, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(word spans [w, 2], the word of each token [n], -1 for a token of whitespace only): a
    word is a run of non-space characters, a token belongs to the word of its first
    non-space character."""
    words = np.array([m.span() for m in _WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
    owner = np.full(len(offsets), -1, dtype=np.int64)
    if not len(words) or not len(offsets):
        return words, owner
    for i, (a, b) in enumerate(offsets.tolist()):
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            owner[i] = np.searchsorted(words[:, 1], a, side="right")
    return words, owner


def trim_decoration(text: str, words: np.ndarray) -> np.ndarray:
    """Word spans without the markdown decoration at their ends ("**Answer:**" keeps
    "Answer:"); a word that is all decoration stays whole (it ranks last)."""
    marks = decoration_chars(text)
    out = words.copy()
    for i, (a, b) in enumerate(words.tolist()):
        start, end = a, b
        while start < end and marks[start]:
            start += 1
        while end > start and marks[end - 1]:
            end -= 1
        if start < end:
            out[i] = (start, end)
    return out


def dropped_spans(
    offsets: np.ndarray, keep: np.ndarray, scores: np.ndarray, reason: str
) -> list[dict[str, Any]]:
    """Runs of dropped units as --explain entries: character span, the run's highest score."""
    out: list[dict[str, Any]] = []
    previous = -2
    for i in np.flatnonzero(~keep).tolist():
        a, b = int(offsets[i, 0]), int(offsets[i, 1])
        if i == previous + 1 and out:
            out[-1]["end"] = b
            out[-1]["score"] = max(out[-1]["score"], round(float(scores[i]), 4))
        else:
            out.append(
                {"start": a, "end": b, "score": round(float(scores[i]), 4), "reason": reason}
            )
        previous = i
    return out
