"""Compression methods, one class each, registered by name in METHODS.

A method sees one batch of records as `Item`s and answers three questions for the Compressor,
which plans the budgets and does everything else:

    prepare(items, targets) -> views    per-record state: importance, spans, a rewritten text
    floor(item, view) -> int            counted tokens that must stay whatever the budget
    select(item, view, target) -> Selection   what to keep within `target` counted tokens

`carries_debt` says whether the dataset-level ratio is held across records (tokens kept over
one record's budget are taken from later ones); `criteria` lists the importance criteria a
method accepts (the first is the default).
"""

from __future__ import annotations

import abc
import itertools
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cd_fast.compress.backbone import (
    ANSWER,
    REST,
    step_units,
    token_priority,
    value_flow,
)
from cd_fast.compress.rewrite import fill_template, prompt_template
from cd_fast.compress.select import (
    answer_position,
    answer_span,
    head_chars,
    join_spans,
    select_steps,
    token_spans,
)
from cd_fast.data import Trace
from cd_fast.score.protect import decoration_chars
from cd_fast.score.steps import token_steps
from cd_fast.score.store import RecordScores

if TYPE_CHECKING:
    from cd_fast.compress.config import CompressConfig

WORDS_PER_TOKEN = 0.75
_WORD = re.compile(r"\S+")


@dataclass
class Item:
    """One record of a batch, with what every method may need."""

    trace: Trace  # steps filled in
    count: int  # tokens of the trace under the counting (student's) tokenizer
    offsets: np.ndarray  # [count, 2] character offsets of those tokens
    scores: RecordScores | None  # the scorer's token/step scores (None when not needed)
    answer: str | None  # the final answer the compressed trace must keep

    @property
    def steps(self) -> np.ndarray:
        return np.asarray(self.trace.steps, dtype=np.int64).reshape(-1, 2)


@dataclass
class Selection:
    text: str
    spans: list[tuple[int, int]] | None = None  # kept character spans (None: generated text)
    kept_steps: int | None = None
    dropped: list[dict[str, Any]] | None = None  # --explain: the dropped spans, scores, reasons


@dataclass
class Tools:
    """What methods share with the Compressor: token counting, the scorer, the rewriter, and
    the time spent per phase."""

    config: CompressConfig
    count: Callable[[list[str]], list[int]]
    scorer: Any = None
    rewriter: Any = None
    seconds: dict[str, float] | None = None

    def rng(self, record_id: str) -> np.random.Generator:
        """The random criterion's generator of one record (seed + record id)."""
        return np.random.default_rng([self.config.seed, zlib.crc32(record_id.encode())])


class Method(abc.ABC):
    criteria: ClassVar[tuple[str, ...]] = ()
    carries_debt: ClassVar[bool] = False

    def __init__(self, tools: Tools):
        self.tools = tools
        self.config = tools.config

    @classmethod
    def needs_scores(cls, criterion: str | None) -> bool:
        """Whether `criterion` reads the scorer LM's token scores."""
        return False

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[Any]:
        return [None] * len(items)

    def floor(self, item: Item, view: Any) -> int:
        return 0

    @abc.abstractmethod
    def select(self, item: Item, view: Any, target: int) -> Selection:
        """What to keep of `item` within `target` counted tokens."""


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


def dropped_spans(
    offsets: np.ndarray, keep: np.ndarray, scores: np.ndarray, reason: str
) -> list[dict[str, Any]]:
    """Runs of dropped units as explain entries: character span, the run's highest score."""
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


@dataclass
class _TokenView:
    offsets: np.ndarray  # [w, 2] character spans of the words the tokens make up
    sizes: np.ndarray  # [w] tokens per word (the importance's tokenizer)
    priority: np.ndarray  # int8 [w]: backbone.ANSWER > BACKBONE > REST > DECORATION
    importance: np.ndarray  # [w]: the highest of its tokens'
    order: np.ndarray  # word indices, the first kept first


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


class TokenPruning(Method):
    """Keep words in priority order (the answer, the value-flow chain's numbers and operators,
    then the rest by their tokens' importance, markdown decoration last), as many as the
    budget holds once the kept text is tokenised again. Words are kept or dropped whole, so a
    number never loses a digit and no word is cut into pieces that re-tokenise longer."""

    criteria = ("surprisal", "entropy", "random")
    carries_debt = True

    @classmethod
    def needs_scores(cls, criterion: str | None) -> bool:
        return criterion != "random"

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[_TokenView]:
        return [self._view(item) for item in items]

    def _view(self, item: Item) -> _TokenView:
        c, text = self.config, item.trace.trace
        offsets = item.offsets if item.scores is None else item.scores.offsets
        if c.criterion == "random":
            importance = self.tools.rng(item.trace.id).random(len(offsets))
        elif c.criterion == "surprisal":
            importance = item.scores.surprisal
        else:
            importance = item.scores.entropy
        importance = np.asarray(importance, dtype=np.float64)
        if c.protect:
            units = step_units(text, item.steps, "sentence")
            _, chain = value_flow(text, units, answer_units(text, units, item.answer))
            priority = token_priority(text, offsets, answer_span(text, item.answer), units[chain])
        else:
            priority = np.full(len(offsets), REST, dtype=np.int8)
        words, owner = word_groups(text, offsets)
        words = trim_decoration(text, words)
        inside = owner >= 0
        sizes = np.bincount(owner[inside], minlength=len(words))
        word_priority = np.zeros(len(words), dtype=np.int8)
        np.maximum.at(word_priority, owner[inside], priority[inside])
        word_importance = np.full(len(words), -np.inf)
        np.maximum.at(word_importance, owner[inside], importance[inside])
        positions = np.arange(len(words))
        order = np.lexsort((positions, -word_importance, -word_priority))
        return _TokenView(words, sizes, word_priority, word_importance, order)

    def floor(self, item: Item, view: _TokenView) -> int:
        scale = item.count / max(int(view.sizes.sum()), 1)
        return round(int(view.sizes[view.priority == ANSWER].sum()) * scale)

    def _spans(self, view: _TokenView, keep: int) -> list[tuple[int, int]]:
        mask = np.zeros(len(view.offsets), dtype=bool)
        mask[view.order[:keep]] = True
        return token_spans(view.offsets, mask)

    def select(self, item: Item, view: _TokenView, target: int) -> Selection:
        """The most words (in priority order) whose joined text, counted again, fits `target`:
        cut text re-tokenises into other tokens than were kept, so the count is bisected on
        the real text."""
        text = item.trace.trace
        floor = int((view.priority == ANSWER).sum())
        low, high = floor, len(view.offsets)  # the answer's words always stay
        best = self._spans(view, floor)
        if self.tools.count([join_spans(text, best)])[0] <= target:
            while low < high:
                mid = (low + high + 1) // 2
                spans = self._spans(view, mid)
                if self.tools.count([join_spans(text, spans)])[0] <= target:
                    low, best = mid, spans
                else:
                    high = mid - 1
        selection = Selection(join_spans(text, best), best)
        if self.config.explain:
            mask = np.zeros(len(view.offsets), dtype=bool)
            mask[view.order[:low]] = True
            cut = float(view.importance[view.order[low - 1]]) if low else float("nan")
            selection.dropped = dropped_spans(
                view.offsets,
                mask,
                view.importance,
                f"{self.config.criterion} below the cut {cut:.3g} (priority: answer, value-flow "
                "numbers and operators, then importance)",
            )
        return selection


@dataclass
class _StepView:
    steps: np.ndarray  # [k, 2] character offsets of the units
    step_tokens: np.ndarray  # [k] counted tokens per unit
    importance: np.ndarray  # [k]
    must_keep: np.ndarray  # bool [k]: the units stating the answer


class StepPruning(Method):
    """Drop the least important units (sentences or paragraphs, a question bound to its
    answer); the units stating the answer stay, order is kept."""

    criteria = ("value-flow", "surprisal", "entropy", "answer-delta", "random")
    carries_debt = True

    @classmethod
    def needs_scores(cls, criterion: str | None) -> bool:
        return criterion in ("surprisal", "entropy")

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[_StepView]:
        return [self._view(item) for item in items]

    def _importance(self, item: Item, units: np.ndarray, must_keep: np.ndarray) -> np.ndarray:
        c = self.config
        if c.criterion == "random":
            return self.tools.rng(item.trace.id).random(len(units))
        if c.criterion == "value-flow":
            return value_flow(item.trace.trace, units, must_keep)[0]
        if c.criterion == "answer-delta":
            if not item.answer:
                return np.zeros(len(units))  # nothing to condition on: order by position
            if self.tools.scorer is None:
                raise ValueError("criterion answer-delta runs the scorer LM: pass --scorer")
            tic = time.perf_counter()
            groups = ablation_groups(units, c.max_ablations)
            delta = self.tools.scorer.answer_delta(item.trace, groups.spans, item.answer)
            self.tools.seconds["scoring"] += time.perf_counter() - tic
            return np.asarray(delta, dtype=np.float64)[groups.of_unit]
        return item.scores.for_steps(units)[f"step_{c.criterion}_{c.aggregation}"]

    def _view(self, item: Item) -> _StepView:
        text = item.trace.trace
        units = step_units(text, item.steps, self.config.granularity)
        # only the sentences stating the answer must stay, not the whole paragraph around them
        sentences = item.steps
        units = split_out(units, sentences[answer_units(text, sentences, item.answer)])
        step_tokens = np.bincount(token_steps(item.offsets, units), minlength=len(units))
        must_keep = answer_units(text, units, item.answer)
        importance = np.asarray(self._importance(item, units, must_keep), dtype=np.float64)
        return _StepView(units, step_tokens, importance, must_keep)

    def floor(self, item: Item, view: _StepView) -> int:
        return int(view.step_tokens[view.must_keep].sum())

    def select(self, item: Item, view: _StepView, target: int) -> Selection:
        mask = select_steps(view.importance, view.step_tokens, view.must_keep, target)
        spans = [(int(a), int(b)) for a, b in view.steps[mask]]
        selection = Selection(join_spans(item.trace.trace, spans), spans, int(mask.sum()))
        if self.config.explain:
            selection.dropped = self._explain(view, mask)
        return selection

    def _explain(self, view: _StepView, mask: np.ndarray) -> list[dict[str, Any]]:
        c = self.config
        free = mask & ~view.must_keep
        cut = float(view.importance[free].min()) if free.any() else float("inf")
        name = (
            c.criterion
            if c.criterion not in ("surprisal", "entropy")
            else (f"{c.criterion} ({c.aggregation})")
        )
        entries = []
        for i in np.flatnonzero(~mask).tolist():
            score = float(view.importance[i])
            if c.criterion == "value-flow" and score < 1:
                reason = "off the value chain: no later kept step or the answer uses its values"
            elif score >= cut:
                reason = f"{name} {score:.3g} ranks among the kept, but the step did not fit"
            else:
                reason = f"{name} {score:.3g} below the lowest kept, {cut:.3g}"
            a, b = view.steps[i].tolist()
            entries.append({"start": a, "end": b, "score": round(score, 4), "reason": reason})
        return entries


def split_out(units: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """`units` with each of `spans` made a unit of its own (the rest of a unit it was cut from
    stays a unit before and after it)."""
    bounds = set(units.ravel().tolist()) | set(np.asarray(spans).ravel().tolist())
    pairs = list(itertools.pairwise(sorted(bounds)))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass
class _Groups:
    spans: np.ndarray  # [g, 2] character offsets of the groups ablated together
    of_unit: np.ndarray  # [k] the group of each unit


def ablation_groups(units: np.ndarray, limit: int) -> _Groups:
    """At most `limit` runs of consecutive units of about equal character length, so
    answer-delta costs at most limit + 1 forward passes of the trace whatever its length."""
    k = len(units)
    if k <= limit:
        return _Groups(units, np.arange(k))
    lengths = np.cumsum(units[:, 1] - units[:, 0])
    of_unit = np.minimum((lengths - 1) * limit // max(int(lengths[-1]), 1), limit - 1)
    of_unit = np.unique(of_unit, return_inverse=True)[1]
    spans = np.array(
        [[units[of_unit == g][0, 0], units[of_unit == g][-1, 1]] for g in range(of_unit.max() + 1)]
    )
    return _Groups(spans, of_unit)


class Truncation(Method):
    """Keep the head of the trace."""

    carries_debt = True

    def select(self, item: Item, view: None, target: int) -> Selection:
        head = head_chars(item.offsets, target)
        spans = [(0, head)]
        selection = Selection(join_spans(item.trace.trace, spans), spans)
        if self.config.explain and head < len(item.trace.trace):
            selection.dropped = [
                {
                    "start": head,
                    "end": len(item.trace.trace),
                    "score": 0.0,
                    "reason": f"after the first {target} tokens (truncation keeps the head)",
                }
            ]
        return selection


class Rewriting(Method):
    """An instruct model rewrites each trace to about its budget (generated in `prepare`)."""

    def __init__(self, tools: Tools):
        super().__init__(tools)
        self.template = prompt_template(self.config.level, self.config.prompt)

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[str]:
        if self.tools.rewriter is None:
            raise ValueError("method rewrite needs a rewriter backend")
        prompts = [
            fill_template(
                self.template,
                item.trace.question,
                item.trace.trace,
                max(1, round(n * WORDS_PER_TOKEN)),
            )
            for item, n in zip(items, targets.tolist(), strict=True)
        ]
        limits = [self.config.max_new_tokens or max(64, int(1.5 * n)) for n in targets.tolist()]
        tic = time.perf_counter()
        texts = self.tools.rewriter.generate(prompts, limits)
        self.tools.seconds["generation"] += time.perf_counter() - tic
        return texts

    def select(self, item: Item, view: str, target: int) -> Selection:
        return Selection(view)


METHODS: dict[str, type[Method]] = {
    "token": TokenPruning,
    "step": StepPruning,
    "truncate": Truncation,
    "rewrite": Rewriting,
}


def step_at(steps: np.ndarray, position: int) -> int:
    """Index of the step holding character `position`."""
    return int(min(np.searchsorted(steps[:, 1], position, side="right"), len(steps) - 1))
