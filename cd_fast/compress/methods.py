"""Compression methods, one class each, registered by name in METHODS.

A method sees one batch of records as `Item`s and answers three questions for the Compressor,
which plans the budgets and does everything else:

    prepare(items, targets) -> views    per-record state: importance, spans, a rewritten text
    floor(item, view) -> int            counted tokens that must stay whatever the budget
    select(item, view, target) -> Selection   what to keep within `target` counted tokens

`carries_debt` says whether the dataset-level ratio is held across records (tokens kept over
one record's budget are taken from later ones); `criteria` lists the importance criteria a
method accepts (`cd_fast.compress.criteria`; the first is the default). A method also words
what its records say: `describe()` (meta.compression and the summary) and why a record missed
its share of the budget.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cd_fast.compress.backbone import ANSWER, REST, token_priority, value_flow
from cd_fast.compress.criteria import CRITERIA, METHOD_CRITERIA, Criterion
from cd_fast.compress.item import Item, MethodContext, Selection
from cd_fast.compress.rewrite import fill_template, prompt_template
from cd_fast.compress.select import (
    dropped_spans,
    head_chars,
    join_spans,
    select_steps,
    token_spans,
    trim_decoration,
    word_groups,
)
from cd_fast.compress.units import answer_units, split_out, step_units
from cd_fast.formats import answer_span
from cd_fast.generate import Request, Sampling
from cd_fast.score.steps import token_steps

WORDS_PER_TOKEN = 0.75


class Method(abc.ABC):
    name: ClassVar[str]
    criteria: ClassVar[tuple[str, ...]]  # set from METHOD_CRITERIA by the method's name
    carries_debt: ClassVar[bool] = False
    # why a record ended off its share of the budget (see Compressor.budget_miss)
    under_share: ClassVar[str] = "under: gave tokens to records over their share"
    over_share: ClassVar[str] = "over: took budget other records saved"
    must_keep: ClassVar[str] = "the answer"  # what the floor holds

    def __init__(self, context: MethodContext):
        self.context = context
        self.config = context.config

    def __init_subclass__(cls, **options: Any):
        super().__init_subclass__(**options)
        cls.criteria = METHOD_CRITERIA[cls.name]

    @property
    def criterion(self) -> Criterion | None:
        return CRITERIA[self.config.criterion] if self.config.criterion else None

    def describe(self) -> dict[str, Any]:
        """method, criterion (and its settings), level (rewrite) and budget, as outputs record
        them."""
        c = self.config
        return {
            "method": self.name,
            "criterion": c.criterion,
            **self.criterion_settings(),
            "level": None,
            "budget": c.target_tokens if c.target_tokens is not None else c.budget,
        }

    def criterion_settings(self) -> dict[str, Any]:
        return {}

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[Any]:
        return [None] * len(items)

    def floor(self, item: Item, view: Any) -> int:
        return 0

    @abc.abstractmethod
    def select(self, item: Item, view: Any, target: int) -> Selection:
        """What to keep of `item` within `target` counted tokens."""


@dataclass
class _WordView:
    offsets: np.ndarray  # [w, 2] character spans of the words the tokens make up
    sizes: np.ndarray  # [w] tokens per word (the importance's tokenizer)
    priority: np.ndarray  # int8 [w]: backbone.ANSWER > BACKBONE > REST > DECORATION
    importance: np.ndarray  # [w]: the highest of its tokens'
    order: np.ndarray  # word indices, the first kept first


class TokenPruning(Method):
    """Keep words in priority order (the answer, the value-flow chain's numbers and operators,
    then the rest by their tokens' importance, markdown decoration last), as many as the
    budget holds once the kept text is tokenised again. Words are kept or dropped whole, so a
    number never loses a digit and no word is cut into pieces that re-tokenise longer."""

    name = "token"
    carries_debt = True

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[_WordView]:
        return [self._view(item) for item in items]

    def _view(self, item: Item) -> _WordView:
        text, offsets = item.trace.trace, item.scored_offsets
        importance = np.asarray(self.criterion.token(item, self.context), dtype=np.float64)
        if self.config.protect:
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
        return _WordView(words, sizes, word_priority, word_importance, order)

    def floor(self, item: Item, view: _WordView) -> int:
        scale = item.count / max(int(view.sizes.sum()), 1)
        return round(int(view.sizes[view.priority == ANSWER].sum()) * scale)

    def _spans(self, view: _WordView, keep: int) -> list[tuple[int, int]]:
        mask = np.zeros(len(view.offsets), dtype=bool)
        mask[view.order[:keep]] = True
        return token_spans(view.offsets, mask)

    def select(self, item: Item, view: _WordView, target: int) -> Selection:
        """The most words (in priority order) whose joined text, counted again, fits `target`:
        cut text re-tokenises into other tokens than were kept, so the count is bisected on
        the real text."""
        text, count = item.trace.trace, self.context.count
        floor = int((view.priority == ANSWER).sum())
        low, high = floor, len(view.offsets)  # the answer's words always stay
        best = self._spans(view, floor)
        if count([join_spans(text, best)])[0] <= target:
            while low < high:
                mid = (low + high + 1) // 2
                spans = self._spans(view, mid)
                if count([join_spans(text, spans)])[0] <= target:
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
class _UnitView:
    units: np.ndarray  # [k, 2] character offsets of the units
    unit_tokens: np.ndarray  # [k] counted tokens per unit
    importance: np.ndarray  # [k]
    must_keep: np.ndarray  # bool [k]: the units stating the answer
    roles: list[str] | None = None  # --explain: each unit's step role


class StepPruning(Method):
    """Drop the least important units (sentences or paragraphs, a question bound to its
    answer); the units stating the answer stay, order is kept."""

    name = "step"
    carries_debt = True
    under_share = "under: the next step would overshoot the share by more than it misses"
    over_share = "over: the steps kept are larger than the share"
    must_keep = "the steps stating the answer"

    def criterion_settings(self) -> dict[str, Any]:
        settings = {"granularity": self.config.granularity}
        if self.criterion.aggregated:
            settings["aggregation"] = self.config.aggregation
        return settings

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[_UnitView]:
        return [self._view(item) for item in items]

    def _view(self, item: Item) -> _UnitView:
        text = item.trace.trace
        units = step_units(text, item.steps, self.config.granularity)
        # only the sentences stating the answer must stay, not the whole paragraph around them
        sentences = item.steps
        units = split_out(units, sentences[answer_units(text, sentences, item.answer)])
        unit_tokens = np.bincount(token_steps(item.offsets, units), minlength=len(units))
        must_keep = answer_units(text, units, item.answer)
        importance = self.criterion.unit(item, units, must_keep, self.context)
        roles = item.roles.unit_roles(units) if self.config.explain else None
        return _UnitView(units, unit_tokens, np.asarray(importance, np.float64), must_keep, roles)

    def floor(self, item: Item, view: _UnitView) -> int:
        return int(view.unit_tokens[view.must_keep].sum())

    def select(self, item: Item, view: _UnitView, target: int) -> Selection:
        mask = select_steps(view.importance, view.unit_tokens, view.must_keep, target)
        spans = [(int(a), int(b)) for a, b in view.units[mask]]
        selection = Selection(join_spans(item.trace.trace, spans), spans, int(mask.sum()))
        if self.config.explain:
            selection.dropped = self._dropped(view, mask)
        return selection

    def _dropped(self, view: _UnitView, mask: np.ndarray) -> list[dict[str, Any]]:
        """--explain entries: each dropped unit, its score, and why it was dropped."""
        criterion = self.criterion
        free = mask & ~view.must_keep
        cut = float(view.importance[free].min()) if free.any() else float("inf")
        name = criterion.label(self.config.aggregation)
        entries = []
        for i in np.flatnonzero(~mask).tolist():
            score = float(view.importance[i])
            if criterion.below_one and score < 1:
                reason = criterion.below_one
            elif score >= cut:
                reason = f"{name} {score:.3g} ranks among the kept, but the step did not fit"
            else:
                reason = f"{name} {score:.3g} below the lowest kept, {cut:.3g}"
            a, b = view.units[i].tolist()
            entries.append(
                {
                    "start": a,
                    "end": b,
                    "score": round(score, 4),
                    "reason": f"{view.roles[i]} step: {reason}",
                    "role": view.roles[i],
                }
            )
        return entries


class Truncation(Method):
    """Keep the head of the trace."""

    name = "truncate"
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

    name = "rewrite"

    def __init__(self, context: MethodContext):
        super().__init__(context)
        self.template = prompt_template(self.config.level, self.config.prompt)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "level": self.config.level}

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[str]:
        if self.context.rewriter is None:
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
        requests = [
            Request.user(prompt, Sampling(max_new_tokens=limit))
            for prompt, limit in zip(prompts, limits, strict=True)
        ]
        replies = self.context.rewriter.generate(requests)
        self.context.seconds["generation"] += time.perf_counter() - tic
        return [samples[0].text for samples in replies]

    def select(self, item: Item, view: str, target: int) -> Selection:
        return Selection(view)


METHODS: dict[str, type[Method]] = {
    method.name: method for method in (TokenPruning, StepPruning, Truncation, Rewriting)
}
