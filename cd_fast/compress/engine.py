"""The compression engine: one batch of traces in, compressed traces and per-record accounting
out. Token and step pruning select by importance under a per-trace token budget; truncation
keeps the head; rewriting asks an instruct model. Every method ends with the answer check."""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from cd_fast.compress.answer_delta import answer_delta
from cd_fast.compress.config import CompressConfig
from cd_fast.compress.rewrite import fill_template, prompt_template
from cd_fast.compress.select import (
    answer_position,
    contains_answer,
    head_chars,
    join_spans,
    select_steps,
    select_tokens,
    token_spans,
)
from cd_fast.data import Trace
from cd_fast.score.protect import extract_answer, protected_tokens
from cd_fast.score.steps import token_steps
from cd_fast.score.store import RecordScores
from cd_fast.segment import segment_steps

MIN_ADAPTIVE_SHARE = 0.25  # an easy trace keeps at least a quarter of the asked ratio
WORDS_PER_TOKEN = 0.75


@dataclass
class RecordResult:
    """What happened to one record (the summary adds these up)."""

    id: str
    trace: Trace | None  # None: dropped
    tokens_before: int
    tokens_after: int
    chars_before: int
    chars_after: int
    answer_in_original: bool
    answer_kept: bool | None  # after the policy; None when the original lacks the answer
    action: str  # compressed | expanded | original | dropped
    kept_steps: int | None = None


def final_answer(trace: Trace) -> str | None:
    """The answer the compressed trace must still carry: gold, else the one the response states,
    else the one the trace ends on."""
    return trace.gold or extract_answer(trace.answer) or extract_answer(trace.trace)


def adaptive_targets(lengths: np.ndarray, difficulty: np.ndarray, ratio: float) -> np.ndarray:
    """Per-trace keep ratios that grow with length and difficulty (mean surprisal) and keep
    sum(r_i * n_i) = ratio * sum(n_i): r_i = clip(c * w_i, ratio / 4, 1), c by bisection."""
    n = lengths.astype(np.float64)
    d = np.maximum(difficulty.astype(np.float64), 1e-6)
    weight = np.sqrt(n / n.mean()) * (d / d.mean())
    goal = ratio * n.sum()
    low, high = 0.0, 1.0 / max(weight.min(), 1e-9)
    for _ in range(60):
        c = (low + high) / 2
        kept = (np.clip(c * weight * ratio, ratio * MIN_ADAPTIVE_SHARE, 1.0) * n).sum()
        low, high = (c, high) if kept < goal else (low, c)
    return np.clip(low * weight * ratio, ratio * MIN_ADAPTIVE_SHARE, 1.0)


class Compressor:
    """Compresses batches of traces as `config` says.

    Args:
        config: the method, criterion, budget and policies.
        counter: the student's tokenizer (budgets and ratios are counted in its tokens).
        scorer: a cd_fast.score.Scorer to compute scores on the fly, or None.
        scores: precomputed RecordScores by id (`cdfast score` output), or None.
        match_lengths: token budget by id (truncation matched to another method), or None.
        rewriter: a generation backend for method "rewrite".
    """

    def __init__(
        self,
        config: CompressConfig,
        counter: Any,
        scorer: Any = None,
        scores: dict[str, RecordScores] | None = None,
        match_lengths: dict[str, int] | None = None,
        rewriter: Any = None,
    ):
        self.config = config
        self.counter = counter
        self.scorer = scorer
        self.scores = scores
        self.match_lengths = match_lengths
        self.rewriter = rewriter
        self.template = (
            prompt_template(config.level, config.prompt) if config.method == "rewrite" else None
        )
        self.seconds = {"scoring": 0.0, "selection": 0.0, "generation": 0.0}
        # Tokens kept beyond the ratio budget so far (negative: under it). Later budgets absorb
        # it, so the dataset-level ratio holds although protected symbols, whole steps and
        # restored answers make single traces overshoot or undershoot.
        self.debt = 0

    # ---- inputs ----

    def _rng(self, record_id: str) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, zlib.crc32(record_id.encode())])

    def _count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.counter(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def _record_scores(self, traces: list[Trace]) -> list[RecordScores | None]:
        c = self.config
        if not c.needs_scores:
            return [None] * len(traces)
        tic = time.perf_counter()
        if self.scores is not None:
            missing = [t.id for t in traces if t.id not in self.scores]
            if missing:
                raise ValueError(
                    f"--scores has no scores for record id {missing[0]!r} "
                    f"({len(missing)} of this batch missing): score this file first"
                )
            found = [self.scores[t.id] for t in traces]
            for trace, record in zip(traces, found, strict=True):
                if len(record.offsets) and int(record.offsets[:, 1].max()) > len(trace.trace):
                    raise ValueError(
                        f"record {trace.id!r}: its scores index past the end of its trace "
                        "(scored from a different text?)"
                    )
        elif self.scorer is not None:
            found = self.scorer.score(traces)
        else:
            raise ValueError(
                f"method {c.method} with criterion {c.criterion}"
                f"{' and --adaptive' if c.adaptive else ''} needs --scores or --scorer"
            )
        self.seconds["scoring"] += time.perf_counter() - tic
        return found

    def _targets(
        self, traces: list[Trace], counts: list[int], scores: list[RecordScores | None]
    ) -> np.ndarray:
        c = self.config
        n = np.asarray(counts, dtype=np.int64)
        if self.match_lengths is not None:
            missing = [t.id for t in traces if t.id not in self.match_lengths]
            if missing:
                raise ValueError(f"--match-lengths has no record with id {missing[0]!r}")
            return np.minimum(n, [self.match_lengths[t.id] for t in traces])
        if c.target_tokens is not None:
            return np.minimum(n, c.target_tokens)
        if c.adaptive and len(traces) > 1:
            difficulty = np.array([float(np.mean(s.surprisal)) if len(s.surprisal) else 0.0
                                   for s in scores])  # fmt: skip
            ratios = adaptive_targets(np.maximum(n, 1), difficulty, c.budget)
        else:
            ratios = np.full(len(traces), c.budget)
        return np.minimum(n, np.round(ratios * n).astype(np.int64))

    @property
    def _carries_debt(self) -> bool:
        c = self.config
        return (
            c.method in ("token", "step", "truncate")
            and c.target_tokens is None
            and (self.match_lengths is None)
        )

    def _plan(self, targets: np.ndarray, counts: np.ndarray, floors: np.ndarray) -> np.ndarray:
        """This batch's budgets: each at least its floor (protected tokens, must-keep steps),
        the floors' excess and the debt so far taken from the other budgets in proportion to
        what they could give (never below a floor or half a budget, never above a trace's
        length)."""
        if not self._carries_debt:
            return targets
        floors = np.minimum(floors, counts)
        raised = np.maximum(targets, floors)
        owed = int(raised.sum() - targets.sum()) + self.debt
        if owed > 0:  # no budget gives more than half of itself
            slack = np.minimum(raised - floors, targets // 2)
            if slack.sum():
                raised = raised - np.floor(slack * min(owed / slack.sum(), 1.0)).astype(np.int64)
        elif owed < 0:
            room = counts - raised
            if room.sum():
                raised = raised + np.floor(room * min(-owed / room.sum(), 1.0)).astype(np.int64)
        return raised

    # ---- methods ----

    def _token_view(
        self, trace: Trace, scores: RecordScores | None, answer: str | None
    ) -> _TokenView:
        c = self.config
        if scores is None:  # random criterion: tokens of the counting tokenizer
            encoded = self.counter(
                trace.trace, add_special_tokens=False, return_offsets_mapping=True
            )
            offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            protected = protected_tokens(trace.trace, offsets, answer)
        else:
            offsets, protected = scores.offsets, scores.protected
        if c.criterion == "random":
            importance = self._rng(trace.id).random(len(offsets))
        else:
            importance = scores.surprisal if c.criterion == "surprisal" else scores.entropy
        if not c.protect:
            protected = np.zeros(len(offsets), dtype=bool)
        return _TokenView(offsets, protected, np.asarray(importance))

    def _token_spans(
        self, trace: Trace, view: _TokenView, target: int, count: int
    ) -> list[tuple[int, int]]:
        scale = len(view.offsets) / max(count, 1)  # scorer tokens per counted token
        floor = int(view.protected.sum())
        keep = round(target * scale)
        spans = token_spans(view.offsets, select_tokens(view.importance, view.protected, keep))
        # text re-tokenised after cutting can differ a little from the sum of the kept tokens
        for _ in range(2):
            got = self._count([join_spans(trace.trace, spans)])[0]
            if got <= target or keep <= floor:
                break
            keep = max(floor, keep - round((got - target) * scale))
            spans = token_spans(view.offsets, select_tokens(view.importance, view.protected, keep))
        return spans

    def _step_view(
        self, trace: Trace, scores: RecordScores | None, offsets: np.ndarray, answer: str | None
    ) -> _StepView:
        c = self.config
        steps = np.asarray(trace.steps, dtype=np.int64).reshape(-1, 2)
        step_tokens = np.bincount(token_steps(offsets, steps), minlength=len(steps))
        if c.criterion == "random":
            importance = self._rng(trace.id).random(len(steps))
        elif c.criterion == "answer-delta" and answer:
            if self.scorer is None:
                raise ValueError("criterion answer-delta runs the scorer LM: pass --scorer")
            tic = time.perf_counter()
            importance = answer_delta(
                self.scorer.model, self.scorer.tokenizer, trace.question, trace.trace, steps,
                f"The final answer is {answer}.", self.scorer.budget,
            )  # fmt: skip
            self.seconds["scoring"] += time.perf_counter() - tic
        elif c.criterion == "entropy":
            importance = scores.step_scores["step_entropy_sum"]
        else:  # surprisal, and answer-delta for a record without an answer to lean on
            importance = scores.step_scores["step_surprisal_mean"]
        must_keep = np.zeros(len(steps), dtype=bool)
        if len(steps):
            must_keep[0] = True
            at = answer_position(trace.trace, answer)
            if at is not None:
                must_keep[_step_at(steps, at)] = True
            for i, (a, b) in enumerate(steps.tolist()):
                if "\\boxed" in trace.trace[a:b]:
                    must_keep[i] = True
        return _StepView(steps, step_tokens, np.asarray(importance), must_keep)

    # ---- the batch ----

    def __call__(self, traces: list[Trace]) -> list[RecordResult]:
        c = self.config
        missing = [i for i, t in enumerate(traces) if t.steps is None]
        if missing:
            segmented = segment_steps([traces[i].trace for i in missing])
            traces = list(traces)
            for i, steps in zip(missing, segmented, strict=True):
                traces[i] = dataclasses.replace(traces[i], steps=steps.tolist())
        encoded = self.counter(
            [t.trace for t in traces], add_special_tokens=False, return_offsets_mapping=True
        )
        counts = [len(ids) for ids in encoded["input_ids"]]
        scores = self._record_scores(traces)
        targets = self._targets(traces, counts, scores)
        answers = [final_answer(t) for t in traces]
        offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in encoded["offset_mapping"]]
        views: list[Any] = [None] * len(traces)
        floors = np.zeros(len(traces), dtype=np.int64)
        for i, trace in enumerate(traces):
            if c.method == "token":
                views[i] = self._token_view(trace, scores[i], answers[i])
                scale = counts[i] / max(len(views[i].offsets), 1)
                floors[i] = round(int(views[i].protected.sum()) * scale)
            elif c.method == "step":
                views[i] = self._step_view(trace, scores[i], offsets[i], answers[i])
                floors[i] = int(views[i].step_tokens[views[i].must_keep].sum())
        planned = self._plan(targets, np.asarray(counts), floors)

        texts = self._rewrite(traces, targets) if c.method == "rewrite" else None
        tic = time.perf_counter()
        # Select, then count what the texts really hold: cut text re-tokenises a little longer,
        # protected symbols and restored answers can exceed a budget. Traces that ended over
        # their budget keep what they have (their floor rises to it) and the others' budgets
        # are planned again, so the batch lands on its share of the ratio.
        results: list[Any] = [None] * len(traces)
        after = np.zeros(len(traces), dtype=np.int64)
        fixed = np.zeros(len(traces), dtype=bool)
        for _ in range(3):
            redo = np.flatnonzero(~fixed)
            if not redo.size:
                break
            chosen = self._select(
                [traces[i] for i in redo], [views[i] for i in redo], planned[redo],
                None if texts is None else [texts[i] for i in redo],
                [offsets[i] for i in redo], [counts[i] for i in redo], [answers[i] for i in redo],
            )  # fmt: skip
            counted = self._count([r.trace.trace if r.trace else "" for r in chosen])
            for i, result, tokens in zip(redo, chosen, counted, strict=True):
                results[i], after[i] = result, tokens
            if not self._carries_debt:
                break
            kept = np.array([r.trace is not None for r in results])
            over = kept & (after > planned)
            goal = int(targets[kept].sum()) - self.debt
            if not over.any() or abs(int(after[kept].sum()) - goal) <= 0.005 * max(goal, 1):
                break
            fixed |= over
            floors = np.where(over, after, floors)
            planned = self._plan(targets, np.asarray(counts), floors)
        for result, tokens, target in zip(results, after.tolist(), targets.tolist(), strict=True):
            result.tokens_after = tokens if result.trace else 0
            if result.trace and self._carries_debt:
                self.debt += tokens - target
            if result.trace:
                info = result.trace.meta["compression"]
                info["ratio_tokens"] = round(tokens / max(result.tokens_before, 1), 4)
        self.seconds["selection"] += time.perf_counter() - tic
        return results

    def _select(
        self,
        traces: list[Trace],
        views: list[Any],
        planned: np.ndarray,
        rewritten: list[str] | None,
        offsets: list[np.ndarray],
        counts: list[int],
        answers: list[str | None],
    ) -> list[RecordResult]:
        c = self.config
        results = []
        for i, trace in enumerate(traces):
            target = int(planned[i])
            spans, kept_steps = None, None
            if c.method == "token":
                spans = self._token_spans(trace, views[i], target, counts[i])
            elif c.method == "step":
                view = views[i]
                mask = select_steps(view.importance, view.step_tokens, view.must_keep, target)
                spans = [(int(a), int(b)) for a, b in view.steps[mask]]
                kept_steps = int(mask.sum())
            elif c.method == "truncate":
                spans = [(0, head_chars(offsets[i], target))]
            text = join_spans(trace.trace, spans) if spans is not None else rewritten[i]
            results.append(self._finish(trace, text, spans, counts[i], answers[i], kept_steps))
        return results

    def _rewrite(self, traces: list[Trace], targets: np.ndarray) -> list[str]:
        if self.rewriter is None:
            raise ValueError("method rewrite needs a rewriter backend")
        prompts = [
            fill_template(self.template, t.question, t.trace, max(1, round(n * WORDS_PER_TOKEN)))
            for t, n in zip(traces, targets, strict=True)
        ]
        limits = [self.config.max_new_tokens or max(64, int(1.5 * n)) for n in targets.tolist()]
        tic = time.perf_counter()
        texts = self.rewriter.generate(prompts, limits)
        self.seconds["generation"] += time.perf_counter() - tic
        return texts

    def _finish(
        self,
        trace: Trace,
        text: str,
        spans: list[tuple[int, int]] | None,
        count: int,
        answer: str | None,
        kept_steps: int | None,
    ) -> RecordResult:
        c = self.config
        in_original = contains_answer(trace.trace, answer)
        action = "compressed"
        if in_original and not contains_answer(text, answer):
            if c.on_lost_answer == "drop":
                return RecordResult(trace.id, None, count, 0, len(trace.trace), 0, True, False,
                                    "dropped", kept_steps)  # fmt: skip
            if c.on_lost_answer == "original":
                text, action = trace.trace, "original"
            else:
                text, action = self._expand(trace, text, spans, answer), "expanded"
        answer_kept = contains_answer(text, answer) if in_original else None
        meta = dict(trace.meta)
        meta["compression"] = {
            "method": c.method,
            "criterion": c.criterion,
            "level": c.level if c.method == "rewrite" else None,
            "budget": c.target_tokens if c.target_tokens is not None else c.budget,
            "ratio_chars": round(len(text) / max(len(trace.trace), 1), 4),
            "ratio_tokens": None,  # filled once the batch is counted
            "kept_steps": kept_steps,
            "answer_kept": answer_kept,
            "action": action,
        }
        if c.adaptive:
            meta["compression"]["adaptive"] = True
        if c.keep_original:
            meta["original_trace"] = trace.trace
        compressed = dataclasses.replace(trace, trace=text, meta=meta, steps=None)
        return RecordResult(trace.id, compressed, count, 0, len(trace.trace), len(text),
                            in_original, answer_kept, action, kept_steps)  # fmt: skip

    def _expand(
        self, trace: Trace, text: str, spans: list[tuple[int, int]] | None, answer: str | None
    ) -> str:
        """Put back the original step that states the answer: in place among kept spans, after
        the text of a rewrite."""
        steps = np.asarray(trace.steps, dtype=np.int64).reshape(-1, 2)
        at = answer_position(trace.trace, answer)
        if at is None or not len(steps):
            return trace.trace
        a, b = steps[_step_at(steps, at)].tolist()
        if spans is not None:
            return join_spans(trace.trace, [*spans, (a, b)])
        sentence = trace.trace[a:b].strip()
        return f"{text.rstrip()}\n{sentence}" if text.strip() else sentence


@dataclass
class _TokenView:
    offsets: np.ndarray  # [n, 2] character offsets of the scorer's tokens
    protected: np.ndarray  # bool [n]
    importance: np.ndarray  # [n]


@dataclass
class _StepView:
    steps: np.ndarray  # [k, 2] character offsets
    step_tokens: np.ndarray  # [k] counted tokens per step
    importance: np.ndarray  # [k]
    must_keep: np.ndarray  # bool [k]: the first step and those stating the answer


def _step_at(steps: np.ndarray, position: int) -> int:
    return int(min(np.searchsorted(steps[:, 1], position, side="right"), len(steps) - 1))
