"""Reasoning-step segmentation: the C++ fast path and its pure-Python reference.

A step boundary is the first character of a new step; steps are contiguous ``[start, end)``
character (code point, i.e. Python ``str`` index) ranges that cover the text exactly. Whitespace
after a step belongs to that step. ``csrc/segment.hpp`` implements the same rules; the two must
give identical output (tests compare them on generated and real text).

Rules, in order:

1. Protected spans never contain a boundary: LaTeX math (``$$..$$``, ``$..$`` with pandoc's rule
   that the opening ``$`` is followed and the closing one preceded by a non-space and not followed
   by a digit, so ``$2 and $3`` stays currency; ``\\(..\\)``, ``\\[..\\]``) and code fences
   (a line opening with three backticks up to the next such line, or the end of the text).
2. A boundary sits on a non-space, non-combining character that follows whitespace (with at least
   one non-space character before that whitespace) when the whitespace holds a line break, when
   the text before it ends a sentence (``. ! ?`` and their full-width forms, optionally followed
   by closing quotes or brackets; not after an abbreviation like ``e.g.``, not after a list
   number such as ``1.`` at the start of a line, and not for ``.`` followed by a lowercase ASCII
   letter), or when a discourse marker (``Wait``, ``Hmm``, ``Let me check``...) starts there.
   Right after a CJK full stop (``。！？``) a boundary needs no whitespace.
3. Steps shorter than ``min_chars`` (trailing whitespace not counted) merge into a neighbour: a
   fragment that opens with a marker (or opens the text) joins the next step, any other joins
   the previous one, so "Wait." stays at the head of what it introduces and "Yes." stays after
   what it confirms.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cd_fast.config import lines_of_file, option

DEFAULT_MARKERS: tuple[str, ...] = (
    "But wait",
    "Wait",
    "Alternatively",
    "Hmm",
    "Let me check",
    "Let me verify",
    "Let me double-check",
    "Let me recheck",
    "Let me confirm",
    "Let me recalculate",
    "Let me think",
    "Let me see",
    "Actually",
    "So",
    "Therefore",
    "Thus",
    "Hence",
    "Step",
    "Okay",
    "Alright",
    "Oh",
)

DEFAULT_ABBREVIATIONS: tuple[str, ...] = (
    "e.g.",
    "i.e.",
    "etc.",
    "vs.",
    "cf.",
    "approx.",
    "resp.",
    "incl.",
    "al.",
    "fig.",
    "eq.",
    "eqs.",
    "no.",
    "dr.",
    "mr.",
    "mrs.",
    "ms.",
    "prof.",
    "st.",
    "jr.",
    "sr.",
)


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation rules; the defaults are tuned on real R1/Qwen3 traces."""

    markers: tuple[str, ...] = option(
        DEFAULT_MARKERS,
        parse=lines_of_file,
        metavar="FILE",
        help="Case-sensitive words/phrases that open a step where they start after whitespace "
        "(CLI: a file with one per line, replacing the built-in list).",
    )
    abbreviations: tuple[str, ...] = option(
        DEFAULT_ABBREVIATIONS,
        parse=lines_of_file,
        metavar="FILE",
        help="Tokens ending in '.' that never end a sentence, matched ASCII-case-insensitively "
        "(CLI: a file with one per line, replacing the built-in list).",
    )
    min_chars: int = option(
        16,
        minimum=0,
        help="Steps with fewer characters (trailing whitespace excluded) merge into a neighbour.",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "markers", tuple(self.markers))
        object.__setattr__(self, "abbreviations", tuple(self.abbreviations))
        for name in ("markers", "abbreviations"):
            for value in getattr(self, name):
                if not isinstance(value, str) or not value or _is_space(value[0]):
                    raise ValueError(
                        f"SegmentConfig.{name}: every entry must be a non-empty str that does "
                        f"not start with whitespace, got {value!r}"
                    )
        for abbreviation in self.abbreviations:
            if not abbreviation.endswith(".") or any(_is_space(c) for c in abbreviation):
                raise ValueError(
                    f"SegmentConfig.abbreviations: {abbreviation!r} must be one token ending "
                    "with '.'"
                )
        if not isinstance(self.min_chars, int) or self.min_chars < 0:
            raise ValueError(f"SegmentConfig.min_chars must be an int >= 0, got {self.min_chars!r}")


# Character classes. csrc/segment.hpp holds the same tables; keep them in step.
_SPACE_RANGES = (
    (0x09, 0x0D),
    (0x20, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
)
# Combining marks, joiners, variation selectors, emoji modifiers and tags: never a step's start.
_EXTEND_RANGES = (
    (0x0300, 0x036F),
    (0x0483, 0x0489),
    (0x0591, 0x05BD),
    (0x0610, 0x061A),
    (0x064B, 0x065F),
    (0x0900, 0x0903),
    (0x093A, 0x094F),
    (0x0E31, 0x0E3A),
    (0x0E47, 0x0E4E),
    (0x1AB0, 0x1AFF),
    (0x1DC0, 0x1DFF),
    (0x200C, 0x200D),
    (0x20D0, 0x20FF),
    (0x302A, 0x302F),
    (0x3099, 0x309A),
    (0xFE00, 0xFE0F),
    (0xFE20, 0xFE2F),
    (0x1F3FB, 0x1F3FF),
    (0xE0020, 0xE007F),
    (0xE0100, 0xE01EF),
)
# Non-ASCII characters that end a word (punctuation blocks, x and division signs).
_NON_WORD_RANGES = (
    (0x80, 0xBF),
    (0xD7, 0xD7),
    (0xF7, 0xF7),
    (0x2000, 0x206F),
    (0x3000, 0x303F),
    (0xFF01, 0xFF0F),
    (0xFF1A, 0xFF20),
    (0xFF3B, 0xFF40),
    (0xFF5B, 0xFF65),
)
_TERMINATORS = frozenset(".!?\u3002\uff01\uff1f")
_CJK_TERMINATORS = frozenset("\u3002\uff01\uff1f")
_CLOSERS = frozenset("\"')]}*\u201d\u2019\u300d\u300f\uff09")
_OPENERS = frozenset("\"'([{*\u201c\u2018\u300c\u300e\uff08")


def _in_ranges(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


_SPACE_CHARS = frozenset(chr(c) for lo, hi in _SPACE_RANGES for c in range(lo, hi + 1))


def _is_space(ch: str) -> bool:
    return ch in _SPACE_CHARS


def _is_extend(ch: str) -> bool:
    return _in_ranges(ord(ch), _EXTEND_RANGES)


def _is_word(ch: str) -> bool:
    code = ord(ch)
    if code < 0x80:
        return ch.isascii() and (ch.isalnum() or ch == "_")
    return ch not in _SPACE_CHARS and not _in_ranges(code, _NON_WORD_RANGES)


def _ascii_lower(text: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def protected_spans(s: str) -> list[tuple[int, int]]:
    """Math and code-fence spans, left to right, non-overlapping."""
    n = len(s)
    spans: list[tuple[int, int]] = []
    # A search that failed once fails for every later opener of its kind (it sees a subset of
    # the same closers), so remember failures and keep the scan linear.
    closer_missing = {"\\)": False, "\\]": False, "$$": False}
    inline_fails_before = -1
    i = 0
    while i < n:
        if i == 0 or s[i - 1] == "\n":
            j = i
            while j < n and s[j] in " \t":
                j += 1
            if s.startswith("```", j):
                end = _closing_fence_end(s, j)
                spans.append((j, end))
                i = end
                continue
        c = s[i]
        if c == "\\" and i + 1 < n:
            closer = {"(": "\\)", "[": "\\]"}.get(s[i + 1])
            if closer is not None and not closer_missing[closer]:
                k = s.find(closer, i + 2)
                if k >= 0:
                    spans.append((i, k + 2))
                    i = k + 2
                    continue
                closer_missing[closer] = True
            i += 2
            continue
        if c == "$":
            if i + 1 < n and s[i + 1] == "$":
                if not closer_missing["$$"]:
                    k = s.find("$$", i + 2)
                    if k >= 0:
                        spans.append((i, k + 2))
                        i = k + 2
                        continue
                    closer_missing["$$"] = True
                i += 2
                continue
            if i >= inline_fails_before and i + 1 < n and not _is_space(s[i + 1]):
                k = _inline_math_close(s, i)
                if k >= 0:
                    spans.append((i, k + 1))
                    i = k + 1
                    continue
                inline_fails_before = -k
        i += 1
    return spans


def _closing_fence_end(s: str, fence: int) -> int:
    """End of the line that closes the fence opened at `fence` (len(s) when unclosed)."""
    n = len(s)
    line = s.find("\n", fence)
    while line >= 0:
        m = line + 1
        while m < n and s[m] in " \t":
            m += 1
        if s.startswith("```", m):
            end = s.find("\n", m)
            return n if end < 0 else end
        line = s.find("\n", line + 1)
    return n


def _inline_math_close(s: str, opener: int) -> int:
    """Index of the `$` closing the one at `opener`, or -(where the search stopped)."""
    n = len(s)
    k = opener + 1
    while k < n:
        ch = s[k]
        if ch == "\n":
            m = k + 1
            while m < n and s[m] in " \t\r":
                m += 1
            if m < n and s[m] == "\n":
                return -m
        elif (
            ch == "$"
            and not _is_space(s[k - 1])
            and s[k - 1] != "\\"
            and not (k + 1 < n and "0" <= s[k + 1] <= "9")
        ):
            return k
        k += 1
    return -n


def _starts_marker(s: str, i: int, markers: Sequence[str]) -> bool:
    n = len(s)
    for marker in markers:
        end = i + len(marker)
        if s.startswith(marker, i) and (end >= n or not _is_word(s[end])):
            return True
    return False


def _ends_sentence(s: str, ws_start: int, next_char: str, abbreviations: frozenset[str]) -> bool:
    """Does the text before the whitespace run at `ws_start` end a sentence?"""
    j = ws_start - 1
    while j >= 0 and s[j] in _CLOSERS:
        j -= 1
    if j < 0 or s[j] not in _TERMINATORS:
        return False
    if s[j] != ".":
        return True
    if "a" <= next_char <= "z":
        return False
    token_start = j
    while token_start > 0 and not _is_space(s[token_start - 1]):
        token_start -= 1
    k = token_start
    while k < j and s[k] in _OPENERS:
        k += 1
    token = _ascii_lower(s[k : j + 1])
    if token in abbreviations:
        return False
    if j > token_start and all("0" <= c <= "9" for c in s[token_start:j]):
        m = token_start
        while m > 0 and s[m - 1] in " \t":
            m -= 1
        if m == 0 or s[m - 1] == "\n":
            return False  # a list number such as "1." at the start of a line
    return True


def _raw_boundaries(s: str, config: SegmentConfig) -> list[int]:
    spans = protected_spans(s)
    abbreviations = frozenset(_ascii_lower(a) for a in config.abbreviations)
    starts = [0]
    span = 0
    in_space = False
    space_start = 0
    space_has_newline = False
    for i, c in enumerate(s):
        if _is_space(c):
            if not in_space:
                in_space, space_start, space_has_newline = True, i, False
            if c == "\n":
                space_has_newline = True
            continue
        candidate = False
        if in_space:
            in_space = False
            candidate = space_start > 0 and (
                space_has_newline
                or _ends_sentence(s, space_start, c, abbreviations)
                or _starts_marker(s, i, config.markers)
            )
        elif i > 0 and s[i - 1] in _CJK_TERMINATORS:
            candidate = True
        if not candidate or _is_extend(c):
            continue
        while span < len(spans) and spans[span][1] <= i:
            span += 1
        if span < len(spans) and spans[span][0] < i:
            continue
        starts.append(i)
    return starts


def _content_end(s: str, start: int, end: int) -> int:
    while end > start and _is_space(s[end - 1]):
        end -= 1
    return end


def _merge_short(s: str, starts: list[int], config: SegmentConfig) -> np.ndarray:
    n = len(s)
    ends = [*starts[1:], n]
    out: list[list[int]] = []
    pending: list[int] | None = None  # a short fragment waiting to join the next step
    for start, end in zip(starts, ends, strict=True):
        if pending is not None:
            start = pending[0]
            pending = None
        if _content_end(s, start, end) - start < config.min_chars:
            if not out or _starts_marker(s, start, config.markers):
                pending = [start, end]
            else:
                out[-1][1] = end
            continue
        out.append([start, end])
    if pending is not None:
        if out:
            out[-1][1] = pending[1]
        else:
            out.append(pending)
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _segment_one_py(text: str, config: SegmentConfig) -> np.ndarray:
    if not text:
        return np.zeros((0, 2), dtype=np.int64)
    return _merge_short(text, _raw_boundaries(text, config), config)


def _as_text_list(texts: Iterable[str], check_items: bool = True) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a list of str, not a single string; pass [text]")
    texts = texts if isinstance(texts, list | tuple) else list(texts)
    if check_items:  # the C++ side checks its own input
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
    return texts


def segment_steps_py(
    texts: Iterable[str], *, config: SegmentConfig | None = None
) -> list[np.ndarray]:
    """Pure-Python reference of :func:`segment_steps` (identical output; bench/results/segment.md
    times both)."""
    config = config or SegmentConfig()
    return [_segment_one_py(text, config) for text in _as_text_list(texts)]


@functools.lru_cache(maxsize=8)
def available_cpus() -> int:
    """CPUs the C++ segmenter's threads may use (this process's affinity)."""
    from cd_fast.native import load_extension

    return load_extension().available_cpus()


def _native_segmenter(config: SegmentConfig):
    from cd_fast.native import load_extension

    return load_extension().Segmenter(
        list(config.markers), list(config.abbreviations), config.min_chars
    )


def segment_steps(
    texts: Iterable[str], threads: int = 0, *, config: SegmentConfig | None = None
) -> list[np.ndarray]:
    """Split each text into reasoning steps (C++, thread pool, GIL released).

    Args:
        texts: list of str (any iterable of str is accepted and listed first).
        threads: worker threads; 0 uses every CPU this process may run on.
        config: segmentation rules (markers, abbreviations, min_chars).

    Returns:
        Per text an int64 array of shape (n_steps, 2): ``[start, end)`` character offsets that
        cover the text exactly (an empty text gives shape (0, 2)). The arrays are views of one
        buffer per call (cheap to make); ``.copy()`` one to keep it alone.
    """
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0, got {threads!r}")
    segmenter = _native_segmenter(config or SegmentConfig())
    return segmenter.segment(_as_text_list(texts, check_items=False), threads)


def split_steps(text: str, steps: np.ndarray) -> list[str]:
    """The step strings of `text` for offsets from :func:`segment_steps`."""
    return [text[start:end] for start, end in steps.tolist()]
