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
from cd_fast.kernels.pack import TokenStore
from cd_fast.kernels.token_scores import token_scores
from cd_fast.patches import make_packable
from cd_fast.runtime import token_batches
from cd_fast.score.answer_delta import answer_losses
from cd_fast.score.steps import step_scores
from cd_fast.score.store import RecordScores
from cd_fast.segment import SegmentConfig, segment_steps


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
        help="Tokens per LM-head chunk in token_scores (default: fp32 logits under 512 MiB).",
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
    input_ids: list[int]
    positions: np.ndarray  # hidden-state rows (within this window) that predict...
    targets: np.ndarray  # ...these trace-token indices


@dataclass
class ScoreStats:
    records: int = 0
    input_tokens: int = 0
    scored_tokens: int = 0
    windows: int = 0
    seconds: float = 0.0


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
        tokenizer = self.tokenizer
        text = chat_prompt(tokenizer, question) + target_prefix(self.config.target_template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:  # the first trace token needs a position to be predicted from
            ids = [tokenizer.bos_token_id or tokenizer.eos_token_id or 0]
        return ids[-(self.window // 2) :]

    def _windows(self, record: int, prompt: list[int], trace_ids: list[int]) -> list[_Window]:
        available = self.window - len(prompt)
        windows, start = [], 0
        while start < len(trace_ids):
            context = max(0, start - self.config.overlap) if start else 0
            end = min(len(trace_ids), context + available)
            targets = np.arange(start, end)
            positions = len(prompt) + (targets - context) - 1
            windows.append(_Window(record, prompt + trace_ids[context:end], positions, targets))
            start = end
        return windows

    @torch.inference_mode()
    def _score_batch(self, windows: list[_Window], out: list[tuple[np.ndarray, np.ndarray]]):
        store = TokenStore([w.input_ids for w in windows], device=self.device)
        batch = store.pack(range(len(windows)))
        hidden = self.model.base_model(**batch.model_kwargs()).last_hidden_state[0]  # [T, H]
        starts = np.concatenate([[0], np.cumsum(batch.seq_lengths)[:-1]])
        rows = np.concatenate(
            [start + w.positions for start, w in zip(starts, windows, strict=True)]
        )
        next_ids = np.concatenate([np.asarray(w.input_ids)[w.positions + 1] for w in windows])
        rows_t = torch.from_numpy(rows).to(self.device)
        targets = torch.from_numpy(next_ids).to(self.device)
        scores = token_scores(
            hidden.index_select(0, rows_t),
            self.head.weight,
            targets,
            chunk_size=self.config.chunk_size,
        )
        surprisal = scores.surprisal.cpu().numpy()
        entropy = scores.entropy.cpu().numpy()
        offset = 0
        for window in windows:
            n = len(window.targets)
            out[window.record][0][window.targets] = surprisal[offset : offset + n]
            out[window.record][1][window.targets] = entropy[offset : offset + n]
            offset += n
        self.stats.input_tokens += batch.num_tokens
        self.stats.scored_tokens += offset
        self.stats.windows += len(windows)

    def score(self, traces: list[Trace]) -> list[RecordScores]:
        """Token and step scores for each trace (in order)."""
        tic = time.perf_counter()
        encoded = self.tokenizer(
            [t.trace for t in traces], add_special_tokens=False, return_offsets_mapping=True
        )
        results = [
            (np.zeros(len(ids), np.float32), np.zeros(len(ids), np.float32))
            for ids in encoded["input_ids"]
        ]
        windows = [
            window
            for index, (trace, ids) in enumerate(zip(traces, encoded["input_ids"], strict=True))
            for window in self._windows(index, self.prompt_ids(trace.question), list(ids))
        ]
        sizes = [len(w.input_ids) for w in windows]
        for batch in token_batches(sizes, self.tokens_per_batch):
            self._score_batch([windows[i] for i in batch], results)

        missing = [i for i, t in enumerate(traces) if t.steps is None]
        segmented = segment_steps(
            [traces[i].trace for i in missing], self.config.threads, config=self.segment_config
        )
        steps_of = dict(zip(missing, segmented, strict=True))
        records = []
        for index, trace in enumerate(traces):
            offsets = np.asarray(encoded["offset_mapping"][index], dtype=np.int32).reshape(-1, 2)
            steps = steps_of.get(index)
            if steps is None:
                steps = np.asarray(trace.steps, dtype=np.int64).reshape(-1, 2)
            surprisal, entropy = results[index]
            records.append(
                RecordScores(
                    id=trace.id,
                    token_ids=np.asarray(encoded["input_ids"][index], dtype=np.int32),
                    offsets=offsets,
                    surprisal=surprisal,
                    entropy=entropy,
                    steps=steps,
                    step_scores=step_scores(offsets, steps, surprisal, entropy),
                )
            )
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
