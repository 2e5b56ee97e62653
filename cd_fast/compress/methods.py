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
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cd_fast.compress.rewrite import fill_template, prompt_template
from cd_fast.compress.select import (
    answer_position,
    head_chars,
    join_spans,
    select_steps,
    select_tokens,
    token_spans,
)
from cd_fast.data import Trace
from cd_fast.score.protect import protected_tokens
from cd_fast.score.steps import token_steps
from cd_fast.score.store import RecordScores

if TYPE_CHECKING:
    from cd_fast.compress.config import CompressConfig

WORDS_PER_TOKEN = 0.75


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


@dataclass
class _TokenView:
    offsets: np.ndarray  # [n, 2] character offsets of the importance's tokens
    protected: np.ndarray  # bool [n]
    importance: np.ndarray  # [n]


class TokenPruning(Method):
    """Keep the most important tokens (protected symbols always); text rebuilt from spans."""

    criteria = ("surprisal", "entropy", "random")
    carries_debt = True

    @classmethod
    def needs_scores(cls, criterion: str | None) -> bool:
        return criterion != "random"

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[_TokenView]:
        return [self._view(item) for item in items]

    def _view(self, item: Item) -> _TokenView:
        c = self.config
        if item.scores is None:  # random criterion: the counting tokenizer's tokens
            offsets = item.offsets
            protected = protected_tokens(item.trace.trace, offsets, item.answer)
        else:
            offsets, protected = item.scores.offsets, item.scores.protected
        if c.criterion == "random":
            importance = self.tools.rng(item.trace.id).random(len(offsets))
        elif c.criterion == "surprisal":
            importance = item.scores.surprisal
        else:
            importance = item.scores.entropy
        if not c.protect:
            protected = np.zeros(len(offsets), dtype=bool)
        return _TokenView(offsets, protected, np.asarray(importance))

    def floor(self, item: Item, view: _TokenView) -> int:
        scale = item.count / max(len(view.offsets), 1)
        return round(int(view.protected.sum()) * scale)

    def select(self, item: Item, view: _TokenView, target: int) -> Selection:
        text = item.trace.trace
        scale = len(view.offsets) / max(item.count, 1)  # importance tokens per counted token
        floor = int(view.protected.sum())
        keep = round(target * scale)
        spans = token_spans(view.offsets, select_tokens(view.importance, view.protected, keep))
        # text re-tokenised after cutting can differ a little from the sum of the kept tokens
        for _ in range(2):
            got = self.tools.count([join_spans(text, spans)])[0]
            if got <= target or keep <= floor:
                break
            keep = max(floor, keep - round((got - target) * scale))
            spans = token_spans(view.offsets, select_tokens(view.importance, view.protected, keep))
        return Selection(join_spans(text, spans), spans)


@dataclass
class _StepView:
    steps: np.ndarray  # [k, 2] character offsets
    step_tokens: np.ndarray  # [k] counted tokens per step
    importance: np.ndarray  # [k]
    must_keep: np.ndarray  # bool [k]: the first step and those stating the answer


class StepPruning(Method):
    """Drop the least important reasoning steps; the first step and the answer's stay."""

    criteria = ("surprisal", "entropy", "answer-delta", "random")
    carries_debt = True

    @classmethod
    def needs_scores(cls, criterion: str | None) -> bool:
        return criterion != "random"

    def prepare(self, items: list[Item], targets: np.ndarray) -> list[_StepView]:
        return [self._view(item) for item in items]

    def _importance(self, item: Item, steps: np.ndarray) -> np.ndarray:
        criterion = self.config.criterion
        if criterion == "random":
            return self.tools.rng(item.trace.id).random(len(steps))
        if criterion == "answer-delta" and item.answer:
            if self.tools.scorer is None:
                raise ValueError("criterion answer-delta runs the scorer LM: pass --scorer")
            tic = time.perf_counter()
            delta = self.tools.scorer.answer_delta(item.trace, steps, item.answer)
            self.tools.seconds["scoring"] += time.perf_counter() - tic
            return delta
        scores = item.scores.for_steps(steps)
        if criterion == "entropy":
            return scores["step_entropy_sum"]
        return scores["step_surprisal_mean"]  # surprisal; answer-delta without an answer

    def _view(self, item: Item) -> _StepView:
        steps = item.steps
        step_tokens = np.bincount(token_steps(item.offsets, steps), minlength=len(steps))
        must_keep = np.zeros(len(steps), dtype=bool)
        if len(steps):
            must_keep[0] = True
            at = answer_position(item.trace.trace, item.answer)
            if at is not None:
                must_keep[step_at(steps, at)] = True
            for i, (a, b) in enumerate(steps.tolist()):
                if "\\boxed" in item.trace.trace[a:b]:
                    must_keep[i] = True
        importance = np.asarray(self._importance(item, steps))
        return _StepView(steps, step_tokens, importance, must_keep)

    def floor(self, item: Item, view: _StepView) -> int:
        return int(view.step_tokens[view.must_keep].sum())

    def select(self, item: Item, view: _StepView, target: int) -> Selection:
        mask = select_steps(view.importance, view.step_tokens, view.must_keep, target)
        spans = [(int(a), int(b)) for a, b in view.steps[mask]]
        return Selection(join_spans(item.trace.trace, spans), spans, int(mask.sum()))


class Truncation(Method):
    """Keep the head of the trace."""

    carries_debt = True

    def select(self, item: Item, view: None, target: int) -> Selection:
        spans = [(0, head_chars(item.offsets, target))]
        return Selection(join_spans(item.trace.trace, spans), spans)


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
