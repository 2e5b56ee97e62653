"""The compression engine: one batch of traces in, compressed traces and per-record accounting
out. The method (cd_fast.compress.methods) decides what to keep; the Compressor counts tokens,
gathers scores, plans every record's budget so the dataset-level ratio holds, and checks that the
final answer survived."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cd_fast.compress.config import CompressConfig
from cd_fast.compress.item import Item, MethodContext, Selection
from cd_fast.compress.methods import METHODS
from cd_fast.compress.roles import ROLES, role_shares, tag_roles_batch
from cd_fast.compress.select import join_spans
from cd_fast.compress.units import step_at
from cd_fast.data import Trace
from cd_fast.formats import answer_position, contains_answer, final_answer
from cd_fast.score.store import RecordScores
from cd_fast.segment import segment_steps

MIN_ADAPTIVE_SHARE = 0.25  # an easy trace keeps at least a quarter of the asked ratio


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
    asked_tokens: int | None = None  # the record's share of the budget
    budget_miss: str | None = None  # why tokens_after misses asked_tokens, when it does
    role_chars: dict[str, list[int | None]] | None = None  # role -> [chars before, chars kept]


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
        self.seconds = {"scoring": 0.0, "selection": 0.0, "generation": 0.0}
        context = MethodContext(config, self._count, scorer, rewriter, self.seconds)
        self.method = METHODS[config.method](context)
        # Ratio budgets carry a debt: tokens kept beyond the ratio so far (negative: under it).
        # Later budgets absorb it, so the dataset-level ratio holds although protected symbols,
        # whole steps and restored answers make single traces overshoot or undershoot.
        self.carries_debt = (
            self.method.carries_debt and config.target_tokens is None and match_lengths is None
        )
        self.debt = 0

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly as a straight one."""
        return {"debt": self.debt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.debt = int(state["debt"])

    # ---- inputs ----

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

    def items(self, traces: list[Trace]) -> list[Item]:
        """The records as Items: steps segmented, counted, scored, their step roles tagged."""
        missing = [i for i, t in enumerate(traces) if t.steps is None]
        if missing:
            segmented = segment_steps([traces[i].trace for i in missing])
            traces = list(traces)
            for i, steps in zip(missing, segmented, strict=True):
                traces[i] = dataclasses.replace(traces[i], steps=steps.tolist())
        answers = [final_answer(t.gold, t.answer, t.trace) for t in traces]
        encoded = self.counter(
            [t.trace for t in traces], add_special_tokens=False, return_offsets_mapping=True
        )
        scores = self._record_scores(traces)
        roles = tag_roles_batch(
            [t.trace for t in traces],
            [np.asarray(t.steps, dtype=np.int64) for t in traces],
            [t.question or "" for t in traces],
            answers,
        )
        return [
            Item(
                trace=trace,
                count=len(ids),
                offsets=np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
                scores=record_scores,
                answer=answer,
                roles=record_roles,
            )
            for trace, ids, offsets, record_scores, answer, record_roles in zip(
                traces,
                encoded["input_ids"],
                encoded["offset_mapping"],
                scores,
                answers,
                roles,
                strict=True,
            )
        ]

    def _targets(self, items: list[Item]) -> np.ndarray:
        c = self.config
        n = np.asarray([item.count for item in items], dtype=np.int64)
        if self.match_lengths is not None:
            missing = [i.trace.id for i in items if i.trace.id not in self.match_lengths]
            if missing:
                raise ValueError(f"--match-lengths has no record with id {missing[0]!r}")
            return np.minimum(n, [self.match_lengths[i.trace.id] for i in items])
        if c.target_tokens is not None:
            return np.minimum(n, c.target_tokens)
        if c.adaptive and len(items) > 1:
            difficulty = np.array(
                [
                    float(np.mean(i.scores.surprisal)) if len(i.scores.surprisal) else 0.0
                    for i in items
                ]
            )
            ratios = adaptive_targets(np.maximum(n, 1), difficulty, c.budget)
        else:
            ratios = np.full(len(items), c.budget)
        return np.minimum(n, np.round(ratios * n).astype(np.int64))

    def _plan(self, targets: np.ndarray, counts: np.ndarray, floors: np.ndarray) -> np.ndarray:
        """This batch's budgets: each at least its floor (protected tokens, must-keep steps),
        the floors' excess and the debt so far taken from the other budgets in proportion to
        what they could give (never below a floor or half a budget, never above a trace's
        length)."""
        if not self.carries_debt:
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

    # ---- the batch ----

    def __call__(self, traces: list[Trace]) -> list[RecordResult]:
        items = self.items(traces)
        counts = np.asarray([item.count for item in items], dtype=np.int64)
        targets = self._targets(items)
        views = self.method.prepare(items, targets)
        floors = np.array(
            [self.method.floor(item, view) for item, view in zip(items, views, strict=True)],
            dtype=np.int64,
        )
        tic = time.perf_counter()
        results = self._select_to_plan(items, views, targets, counts, floors)
        for i, (result, target) in enumerate(zip(results, targets.tolist(), strict=True)):
            if result.trace is None:
                continue
            if self.carries_debt:
                self.debt += result.tokens_after - target
            info = result.trace.meta["compression"]
            info["ratio_tokens"] = round(result.tokens_after / max(result.tokens_before, 1), 4)
            info["asked_tokens"], info["tokens"] = target, result.tokens_after
            reason = self._budget_miss(result, target, int(floors[i]))
            if reason:
                info["budget_miss"] = reason
            results[i] = dataclasses.replace(result, asked_tokens=target, budget_miss=reason)
        self.seconds["selection"] += time.perf_counter() - tic
        return results

    def _budget_miss(self, result: RecordResult, target: int, floor: int) -> str | None:
        """Why a record kept more or less than its share of the budget (None when it did
        not): a carried budget lets records trade tokens, so only misses of more than 2 % (and
        2 tokens) are reported."""
        if abs(result.tokens_after - target) <= max(2, 0.02 * target):
            return None
        if result.tokens_after < target:
            return self.method.under_share
        if result.action == "expanded":
            return "over: the step stating the answer was put back"
        if result.action == "original":
            return "over: the answer was lost, so the original was kept"
        if floor > target:
            return f"over: {self.method.must_keep} alone take {floor} tokens"
        return self.method.over_share

    def _select_to_plan(
        self,
        items: list[Item],
        views: list[Any],
        targets: np.ndarray,
        counts: np.ndarray,
        floors: np.ndarray,
    ) -> list[RecordResult]:
        """Select, then count what the texts really hold: cut text re-tokenises a little longer,
        protected symbols and restored answers can exceed a budget. Traces that ended over their
        budget keep what they have (their floor rises to it) and the others' budgets are planned
        again; a batch that ended under (whole steps that did not fit) hands the shortfall to the
        traces with room. Up to three rounds, so the batch lands on its share of the ratio."""
        planned = self._plan(targets, counts, floors)
        results: list[Any] = [None] * len(items)
        fixed = np.zeros(len(items), dtype=bool)
        for _ in range(3):
            redo = np.flatnonzero(~fixed)
            if not redo.size:
                break
            chosen = [
                self._finish(items[i], self.method.select(items[i], views[i], int(planned[i])))
                for i in redo
            ]
            counted = self._count([r.trace.trace if r.trace else "" for r in chosen])
            for i, result, tokens in zip(redo, chosen, counted, strict=True):
                results[i] = dataclasses.replace(result, tokens_after=tokens if result.trace else 0)
            if not self.carries_debt:
                break
            kept = np.array([r.trace is not None for r in results])
            after = np.array([r.tokens_after for r in results])
            over = kept & (after > planned)
            goal = int(targets[kept].sum()) - self.debt
            short = goal - int(after[kept].sum())
            if abs(short) <= 0.005 * max(goal, 1):
                break
            if over.any():
                fixed |= over
                floors = np.where(over, after, floors)
                planned = self._plan(targets, counts, floors)
            else:  # all at or under plan (whole steps): the shortfall goes to those with room
                room = np.where(kept & ~fixed, counts - planned, 0)
                if short < 0 or not room.sum():
                    break
                planned = planned + np.floor(room * min(short / room.sum(), 1.0)).astype(np.int64)
        return results

    def _finish(self, item: Item, selection: Selection) -> RecordResult:
        """The answer check and its policy, then the compressed record and its accounting."""
        c = self.config
        trace, answer, text = item.trace, item.answer, selection.text
        in_original = contains_answer(trace.trace, answer)
        action, restored = "compressed", None
        if in_original and not contains_answer(text, answer):
            if c.on_lost_answer == "drop":
                return RecordResult(
                    id=trace.id,
                    trace=None,
                    tokens_before=item.count,
                    tokens_after=0,
                    chars_before=len(trace.trace),
                    chars_after=0,
                    answer_in_original=True,
                    answer_kept=False,
                    action="dropped",
                    kept_steps=selection.kept_steps,
                )
            if c.on_lost_answer == "original":
                text, action = trace.trace, "original"
            else:
                text, restored = _expand(trace, text, selection.spans, answer)
                action = "expanded"
        answer_kept = contains_answer(text, answer) if in_original else None
        before = item.roles.chars()
        if action == "original":
            kept = before
        elif selection.spans is not None:
            kept = item.roles.chars([*selection.spans, *([restored] if restored else [])])
        else:
            kept = None  # a rewrite keeps no spans of the original
        meta = dict(trace.meta)
        meta["compression"] = {
            **self.method.describe(),
            "ratio_chars": round(len(text) / max(len(trace.trace), 1), 4),
            "ratio_tokens": None,  # filled once the batch is counted
            "kept_steps": selection.kept_steps,
            "answer_kept": answer_kept,
            "action": action,
            "roles": role_shares(before, kept),
        }
        if c.adaptive:
            meta["compression"]["adaptive"] = True
        if c.explain:
            meta["compression"]["explain"] = _dropped_report(
                trace.trace, selection, action, restored
            )
            meta["compression"]["explain"]["roles"] = _role_runs(item)
        if c.keep_original or c.explain:
            meta["original_trace"] = trace.trace
        return RecordResult(
            id=trace.id,
            trace=dataclasses.replace(trace, trace=text, meta=meta, steps=None),
            tokens_before=item.count,
            tokens_after=0,  # counted with the rest of the batch
            chars_before=len(trace.trace),
            chars_after=len(text),
            answer_in_original=in_original,
            answer_kept=answer_kept,
            action=action,
            kept_steps=selection.kept_steps,
            role_chars={
                role: [int(b), None if kept is None else int(kept[i])]
                for i, (role, b) in enumerate(zip(ROLES, before.tolist(), strict=True))
            },
        )


def _role_runs(item: Item) -> list[list]:
    """--explain: [start, end, role] over the original, one entry per run of a role."""
    runs: list[list] = []
    for (a, b), role in zip(item.roles.spans.tolist(), item.roles.names(), strict=True):
        if runs and runs[-1][2] == role:
            runs[-1][1] = b
        else:
            runs.append([a, b, role])
    return runs


def _dropped_report(
    original: str, selection: Selection, action: str, restored: tuple[int, int] | None
) -> dict:
    """The --explain entry: each dropped span with its text, score and reason; none when the
    original was kept whole, and the `restored` answer step cut out of the dropped spans."""
    if action == "original":
        return {"dropped": []}
    dropped = []
    for entry in selection.dropped or []:
        pieces = [(entry["start"], entry["end"])]
        if restored is not None:
            pieces = [
                (a, b)
                for a, b in (
                    (entry["start"], min(entry["end"], restored[0])),
                    (max(entry["start"], restored[1]), entry["end"]),
                )
                if b > a
            ]
        dropped += [{**entry, "start": a, "end": b, "text": original[a:b]} for a, b in pieces]
    return {"dropped": dropped}


def _expand(
    trace: Trace, text: str, spans: list[tuple[int, int]] | None, answer: str | None
) -> tuple[str, tuple[int, int] | None]:
    """Put back the original step that states the answer: in place among kept spans, after the
    text of a rewrite. Returns the text and the step's span (None: the whole original)."""
    steps = np.asarray(trace.steps, dtype=np.int64).reshape(-1, 2)
    at = answer_position(trace.trace, answer)
    if at is None or not len(steps):
        return trace.trace, None
    a, b = steps[step_at(steps, at)].tolist()
    if spans is not None:
        return join_spans(trace.trace, [*spans, (a, b)]), (a, b)
    sentence = trace.trace[a:b].strip()
    return (f"{text.rstrip()}\n{sentence}" if text.strip() else sentence), (a, b)
