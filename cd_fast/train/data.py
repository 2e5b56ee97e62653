"""Turning trace records into token sequences: chat-templated prompt + supervised target."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cd_fast.data import Trace
from cd_fast.formats import chat_prompt, render_target
from cd_fast.kernels import label_token_count
from cd_fast.runtime import batched

logger = logging.getLogger(__name__)


@dataclass
class TrainSet:
    """Tokenised samples: prompt tokens then target tokens (EOS last), loss on the target only."""

    ids: list[str]
    sequences: list[np.ndarray]
    prompt_lengths: np.ndarray
    truncated: list[str] = field(default_factory=list)
    """ids cut to max_seq_length (their target tail is not trained; dropped ones not counted)."""
    dropped: list[str] = field(default_factory=list)
    """ids with no target token left after truncation (not trained at all)."""

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.size for s in self.sequences], dtype=np.int64)

    @property
    def label_tokens(self) -> int:
        return label_token_count(self.lengths, self.prompt_lengths)


def tokenize_traces(
    traces: Iterable[Trace],
    tokenizer: Any,
    target_template: str,
    max_seq_length: int,
    batch_size: int = 256,
) -> TrainSet:
    """Prompt = the question through the chat template; target = target_template + EOS; a
    sample longer than `max_seq_length` (the trainer passes the smaller of max_seq_length and
    max_tokens_per_step) keeps its head, and is counted in `truncated`."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id: the target needs an end token")
    out = TrainSet(ids=[], sequences=[], prompt_lengths=np.zeros(0, np.int64))
    prompt_lengths: list[int] = []

    for batch in batched(traces, batch_size):
        prompts = [chat_prompt(tokenizer, t.question) for t in batch]
        targets = [render_target(target_template, t.trace, t.answer) for t in batch]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
        for trace, prompt, target in zip(batch, prompt_ids, target_ids, strict=True):
            tokens = np.asarray([*prompt, *target, eos], dtype=np.int64)
            cut = tokens.size > max_seq_length
            tokens = tokens[:max_seq_length]
            if tokens.size <= max(len(prompt), 1):
                out.dropped.append(trace.id)
                continue
            if cut:
                out.truncated.append(trace.id)
            out.ids.append(trace.id)
            out.sequences.append(tokens)
            prompt_lengths.append(len(prompt))
    out.prompt_lengths = np.asarray(prompt_lengths, dtype=np.int64)
    if not out.sequences:
        raise ValueError(
            "no trainable records: the data is empty or every prompt fills max_seq_length"
        )
    if out.truncated:
        logger.warning(
            "%d samples are longer than %d tokens (max_seq_length, or max_tokens_per_step when "
            "smaller) and were truncated (ids: %s)",
            len(out.truncated),
            max_seq_length,
            ", ".join(out.truncated[:10]),
        )
    if out.dropped:
        logger.warning(
            "%d samples dropped: the prompt alone fills the %d tokens a sample may hold (ids: %s)",
            len(out.dropped),
            max_seq_length,
            ", ".join(out.dropped[:10]),
        )
    return out
