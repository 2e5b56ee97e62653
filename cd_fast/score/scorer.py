"""Teacher-forced token scoring of traces under a causal LM, in packed varlen batches.

Each trace is scored conditioned on its question: the input is the chat-templated question
followed by "<think>\\n" (the trainer's target format) and the trace tokens. The model's final
hidden states go straight into `token_scores` with the LM head, so no [tokens, vocab] logits
exist beyond one chunk. Traces longer than `window` tokens (prompt included) are scored in
windows: each window repeats the prompt and the last `overlap` already-scored trace tokens as
context, and scores only the tokens it adds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cd_fast.config import check_ranges, option
from cd_fast.data import Trace
from cd_fast.formats import (
    DEFAULT_TARGET_TEMPLATE,
    chat_prompt,
    check_target_template,
    target_prefix,
    target_suffix,
)
from cd_fast.kernels.outputs import IGNORE_INDEX, PackedBatch
from cd_fast.kernels.token_scores import token_scores
from cd_fast.patches import make_packable
from cd_fast.score.answer_delta import answer_losses
from cd_fast.score.steps import step_scores
from cd_fast.score.store import RecordScores
from cd_fast.segment import SegmentConfig, segment_steps


def _offsets(encoded: Any) -> list[np.ndarray]:
    """Each text's int32 [n, 2] character offsets from a batch encoding: read from a fast
    tokenizer's Rust encodings (one array per text, no Python tuple per token kept), else from
    the `offset_mapping` the call was asked for."""
    encodings = getattr(encoded, "encodings", None)
    if encodings:
        return [np.array(e.offsets, dtype=np.int32).reshape(-1, 2) for e in encodings]
    return [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in encoded["offset_mapping"]]


@dataclass
class ScoreConfig:
    """How `cdfast score` (and a Scorer) runs; CLI flags map one to one."""

    model: str | None = option(
        None, help="Scorer LM: a local folder, a hub id (online) or a .gguf file."
    )
    max_tokens_per_batch: int = option(
        16384, minimum=1, help="Token budget of one packed forward pass (prompts included)."
    )
    window: int | None = option(
        None,
        minimum=2,
        help="Longest sequence scored at once (prompt included); default the model's context, "
        "capped at 8192.",
    )
    overlap: int = option(
        256,
        minimum=0,
        help="Trace tokens of context repeated when a long trace continues in a new window.",
    )
    shard_size: int = option(256, minimum=1, help="Records per output shard (the unit of resume).")
    threads: int = option(0, minimum=0, help="Step-segmenter threads (0 = every CPU).")
    device: str | None = option(
        None, help="cuda / cpu; default cuda when available (cuda:LOCAL_RANK under torchrun)."
    )
    chunk_size: int | None = option(
        None,
        minimum=1,
        help="Tokens per LM-head chunk in token_scores (default: fp32 logits under 512 MiB on "
        "a GPU; on a CPU 8 MiB, or hidden_size / 2 rows when that is more).",
    )
    target_template: str = option(
        DEFAULT_TARGET_TEMPLATE,
        help="The student's target format (as `cdfast train --target-template`): each trace is "
        "scored after the question's chat prompt and the template's text before {trace}.",
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        check_target_template(self.target_template)

    def result_options(self) -> dict[str, Any]:
        """The fields that decide what a run writes (its manifest's options): not the device,
        threads, batch or chunk sizes."""
        keys = ("model", "shard_size", "window", "overlap", "target_template")
        return {key: getattr(self, key) for key in keys}


@dataclass
class _Window:
    record: int
    input_ids: np.ndarray  # int64: the prompt, then trace tokens [context, end)
    positions: np.ndarray  # hidden-state rows (within this window) that predict...
    targets: np.ndarray  # ...these trace-token indices


@dataclass
class _HostBatch:
    """One packed forward's inputs and where its scores go, built on the host (the prefetching
    thread builds the next one while the device runs this one)."""

    windows: list[_Window]
    batch: PackedBatch
    rows: torch.Tensor  # int64 [n]: hidden-state rows scored
    targets: torch.Tensor  # int64 [n]: their next tokens


CHARS_PER_TOKEN = 4
"""Characters of trace text tokenised per token of batch budget (a group of traces is about one
batch): a rough ratio, it only sizes the tokeniser's groups."""


class _Records:
    """Per-trace host state of one `Scorer.score` call, shared by the main thread (which writes
    scores and counts windows back) and the prefetching thread (which writes the rest)."""

    def __init__(self, count: int):
        self.tokens: list[Any] = [None] * count  # int64 [n] trace token ids
        self.offsets: list[Any] = [None] * count  # int32 [n, 2]
        self.steps: list[Any] = [None] * count  # int64 [k, 2]
        self.prompts: list[Any] = [None] * count  # int64 prompt ids
        self.scores: list[Any] = [None] * count  # (surprisal, entropy) float32 [n] each
        self.remaining = [0] * count  # windows not scored yet
        self.finished: list[Any] = [None] * count  # RecordScores
        self.finishing: list[Future] = []  # the prefetching thread's record-finishing tasks
        self.worker_seconds = 0.0  # host work done by the prefetching thread


@dataclass
class ScoreStats:
    records: int = 0
    input_tokens: int = 0
    scored_tokens: int = 0
    windows: int = 0
    seconds: float = 0.0
    host_seconds: float = 0.0
    """Host work (tokenising, windows, packing, step scores, records), whichever thread did it:
    the part of `seconds` the prefetching thread does not hide behind the model is less."""


class Scorer:
    """Token and step scores of traces under a causal LM (see the module docstring).

    Args:
        model, tokenizer: the scorer LM, loaded (cd_fast.models.load_causal_lm).
        config: a ScoreConfig (its `model` is not read), or its fields as keywords.
        segment_config: step segmentation rules for traces without steps.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: ScoreConfig | None = None,
        segment_config: SegmentConfig | None = None,
        **options: Any,
    ):
        config = config or ScoreConfig(**options)
        model_config = model.config
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(model_config, name, None) not in (None, 1.0):
                raise ValueError(f"scorer models with {name} are not supported")
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("scorer models with an LM-head bias are not supported")
        make_packable(model)  # windows are scored packed
        self.model, self.tokenizer, self.head = model, tokenizer, head
        self.config = config
        context = getattr(model_config, "max_position_embeddings", None) or 8192
        self.window = int(config.window or min(context, 8192))
        if config.overlap >= self.window // 2:
            raise ValueError(f"overlap must be < window / 2 = {self.window // 2}")
        self.tokens_per_batch = max(config.max_tokens_per_batch, self.window)
        self.segment_config = segment_config
        self.stats = ScoreStats()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def prompt_ids(self, question: str) -> list[int]:
        return self.prompts_ids([question])[0]

    def prompts_ids(self, questions: list[str]) -> list[list[int]]:
        """The token ids each trace is scored after (the question's chat prompt and the target
        template's text before {trace}), tokenised in one batched call."""
        tokenizer, prefix = self.tokenizer, target_prefix(self.config.target_template)
        texts = [chat_prompt(tokenizer, question) + prefix for question in questions]
        fallback = [tokenizer.bos_token_id or tokenizer.eos_token_id or 0]
        # the first trace token needs a position to be predicted from
        return [
            (ids or fallback)[-(self.window // 2) :]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]

    def _windows(self, record: int, prompt: np.ndarray, trace_ids: np.ndarray) -> list[_Window]:
        available = self.window - len(prompt)
        windows, start = [], 0
        while start < len(trace_ids):
            context = max(0, start - self.config.overlap) if start else 0
            end = min(len(trace_ids), context + available)
            targets = np.arange(start, end)
            positions = len(prompt) + (targets - context) - 1
            ids = np.concatenate([prompt, trace_ids[context:end]])
            windows.append(_Window(record, ids, positions, targets))
            start = end
        return windows

    def _host_batch(self, windows: list[_Window]) -> _HostBatch:
        """Pack windows into one row on the host (numpy, no per-token Python), pinned for an
        asynchronous upload on CUDA."""
        lengths = np.array([len(w.input_ids) for w in windows], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        ids = np.concatenate([w.input_ids for w in windows])
        positions = np.arange(len(ids)) - np.repeat(starts, lengths)
        labels = ids.copy()
        labels[starts] = IGNORE_INDEX
        rows = np.concatenate(
            [start + w.positions for start, w in zip(starts, windows, strict=True)]
        )
        cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        pin = self.device.type == "cuda"

        def upload(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            return tensor.pin_memory() if pin else tensor

        batch = PackedBatch(
            input_ids=upload(ids)[None],
            labels=upload(labels)[None],
            position_ids=upload(positions)[None],
            cu_seqlens=upload(cu_seqlens),
            max_seqlen=int(lengths.max()),
            num_label_tokens=len(ids) - len(windows),
            seq_lengths=lengths.tolist(),
        )
        return _HostBatch(windows, batch, upload(rows), upload(ids[rows + 1]))

    def _to_device(self, host: _HostBatch) -> _HostBatch:
        device, batch = self.device, host.batch

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=True)

        moved = PackedBatch(
            input_ids=move(batch.input_ids),
            labels=move(batch.labels),
            position_ids=move(batch.position_ids),
            cu_seqlens=move(batch.cu_seqlens),
            max_seqlen=batch.max_seqlen,
            num_label_tokens=batch.num_label_tokens,
            seq_lengths=batch.seq_lengths,
        )
        return _HostBatch(host.windows, moved, move(host.rows), move(host.targets))

    @torch.inference_mode()
    def _forward(self, host: _HostBatch) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Queue one batch's forward and scores; returns them copied (asynchronously on CUDA)
        to host memory, with the event that marks the copy done (None on the CPU)."""
        on = self._to_device(host)
        hidden = self.model.base_model(**on.batch.model_kwargs()).last_hidden_state[0]  # [T, H]
        scores = token_scores(
            hidden.index_select(0, on.rows),
            self.head.weight,
            on.targets,
            chunk_size=self.config.chunk_size,
        )
        if self.device.type != "cuda":
            return scores.surprisal, scores.entropy, None
        both = torch.stack([scores.surprisal, scores.entropy])
        copied = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
        copied.copy_(both, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return copied[0], copied[1], event

    def _collect(
        self,
        host: _HostBatch,
        scored: tuple[torch.Tensor, torch.Tensor, Any],
        state: _Records,
        traces: list[Trace],
        pool: ThreadPoolExecutor,
    ) -> None:
        """Write one batch's scores into their records; the records it completes are finished
        by the prefetching thread (after the batch it is packing)."""
        surprisal, entropy, event = scored
        if event is not None:
            event.synchronize()
        tic = time.perf_counter()
        surprisal, entropy = surprisal.numpy(), entropy.numpy()
        offset, finished = 0, []
        for window in host.windows:
            n, index = len(window.targets), window.record
            into = slice(int(window.targets[0]), int(window.targets[0]) + n)  # targets are a range
            state.scores[index][0][into] = surprisal[offset : offset + n]
            state.scores[index][1][into] = entropy[offset : offset + n]
            offset += n
            state.remaining[index] -= 1
            if not state.remaining[index]:
                finished.append(index)
        if finished:
            state.finishing.append(
                pool.submit(self._timed, state, self._records, traces, finished, state)
            )
        self.stats.input_tokens += host.batch.num_tokens
        self.stats.scored_tokens += offset
        self.stats.windows += len(host.windows)
        self.stats.host_seconds += time.perf_counter() - tic

    def _group(self, traces: list[Trace], first: int, stop: int, state: _Records) -> None:
        """Tokenise traces [first, stop) in one batched call, with their prompts and steps, into
        `state` (the prefetching thread's work)."""
        group = traces[first:stop]
        fast = getattr(self.tokenizer, "is_fast", False)  # offsets come from its encodings
        encoded = self.tokenizer(
            [t.trace for t in group], add_special_tokens=False, return_offsets_mapping=not fast
        )
        prompts = self.prompts_ids([t.question for t in group])
        missing = [i for i, t in enumerate(group) if t.steps is None]
        texts = [group[i].trace for i in missing]
        found = segment_steps(texts, self.config.threads, config=self.segment_config)
        segmented = dict(zip(missing, found, strict=True))
        for i, (ids, offsets) in enumerate(
            zip(encoded["input_ids"], _offsets(encoded), strict=True)
        ):
            ids = np.asarray(ids, dtype=np.int64)
            steps = segmented.get(i)
            if steps is None:
                steps = np.asarray(group[i].steps, dtype=np.int64).reshape(-1, 2)
            state.tokens[first + i] = ids
            state.offsets[first + i] = offsets
            state.steps[first + i] = steps
            state.prompts[first + i] = np.asarray(prompts[i], dtype=np.int64)
            state.scores[first + i] = (
                np.zeros(len(ids), np.float32),
                np.zeros(len(ids), np.float32),
            )

    def _feed(self, traces: list[Trace], state: _Records) -> Iterator[_HostBatch]:
        """The packed batches of `traces`, built lazily in order by the prefetching thread.
        Traces are tokenised a group at a time (about one batch of text), and the first forward
        is the first trace alone: the device starts after one trace is tokenised, not the whole
        list. Batch budgets then ramp up (1/16, 1/8, 1/4, 1/2 of the token budget, then all of
        it) so that each next group is ready before the device needs it."""
        budget = max(1, self.tokens_per_batch // 16)
        pending: list[_Window] = []
        tokens = first = 0
        while first < len(traces):
            stop, chars = first + 1, len(traces[first].trace)
            while first and stop < len(traces) and chars < CHARS_PER_TOKEN * budget:  # not the 1st
                chars += len(traces[stop].trace)
                stop += 1
            self._group(traces, first, stop, state)
            for index in range(first, stop):
                windows = self._windows(index, state.prompts[index], state.tokens[index])
                state.remaining[index] = len(windows)
                if not windows:  # an empty trace: nothing to score
                    state.finished[index] = self._record(traces[index], index, state)
                for window in windows:
                    size = len(window.input_ids)
                    if pending and tokens + size > budget:
                        yield self._host_batch(pending)
                        pending, tokens = [], 0
                        budget = min(2 * budget, self.tokens_per_batch)
                    pending.append(window)
                    tokens += size
            if not first and pending:  # the first trace goes alone
                yield self._host_batch(pending)
                pending, tokens = [], 0
            first = stop
        if pending:
            yield self._host_batch(pending)

    @staticmethod
    def _timed(state: _Records, work: Any, *args: Any) -> Any:
        """`work(*args)` in the prefetching thread, its time counted as host work."""
        tic = time.perf_counter()
        result = work(*args)
        state.worker_seconds += time.perf_counter() - tic
        return result

    def _records(self, traces: list[Trace], indices: list[int], state: _Records) -> None:
        for index in indices:
            state.finished[index] = self._record(traces[index], index, state)

    def _record(self, trace: Trace, index: int, state: _Records) -> RecordScores:
        """One trace's scores once all its windows are back (the prefetching thread's work)."""
        offsets, steps, (surprisal, entropy) = (
            state.offsets[index],
            state.steps[index],
            state.scores[index],
        )
        return RecordScores(
            id=trace.id,
            token_ids=state.tokens[index].astype(np.int32),
            offsets=offsets,
            surprisal=surprisal,
            entropy=entropy,
            steps=steps,
            step_scores=step_scores(offsets, steps, surprisal, entropy),
        )

    def score(self, traces: list[Trace]) -> list[RecordScores]:
        """Token and step scores for each trace (in order). The device runs one packed batch
        while a thread tokenises and packs the next and finishes the records already scored."""
        tic = time.perf_counter()
        state = _Records(len(traces))
        with ThreadPoolExecutor(1, thread_name_prefix="cd_fast-score") as pool:
            feed = self._feed(traces, state)
            upcoming = pool.submit(self._timed, state, next, feed, None)
            pending = None
            while (host := upcoming.result()) is not None:
                upcoming = pool.submit(self._timed, state, next, feed, None)  # while this runs
                scored = self._forward(host)
                if pending is not None:  # the previous batch's copy, while this one runs
                    self._collect(*pending, state, traces, pool)
                pending = (host, scored)
            if pending is not None:
                self._collect(*pending, state, traces, pool)
            for finishing in state.finishing:
                finishing.result()  # raises what the thread raised
        records = state.finished
        self.stats.host_seconds += state.worker_seconds
        self.stats.records += len(traces)
        self.stats.seconds += time.perf_counter() - tic
        return records

    def answer_delta(self, trace: Trace, steps: np.ndarray, answer: str) -> np.ndarray:
        """SPIRIT-style step importance, float32 [k]: how much the answer's summed surprisal
        rises when step i is cut from the trace (higher = the answer leans on it more)."""
        text = trace.trace
        variants = [text] + [text[:a] + text[b:] for a, b in np.asarray(steps).tolist()]
        template = self.config.target_template
        prompt = chat_prompt(self.tokenizer, trace.question) + target_prefix(template)
        losses = answer_losses(
            self.model,
            self.tokenizer,
            prompt,
            variants,
            target_suffix(template, f"The final answer is {answer}."),
            self.tokens_per_batch,
        )
        return (losses[1:] - losses[0]).astype(np.float32)
