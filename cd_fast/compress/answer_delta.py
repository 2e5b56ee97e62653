"""SPIRIT-style step importance: how much harder the final answer becomes for the scorer LM when
one step is cut out of the trace.

For a trace with steps s_1..s_k and answer text a, with x the question prompt:

    delta_i = L(a | x, trace without s_i) - L(a | x, trace),   L = summed -log p of a's tokens

All k + 1 sequences of all traces go through the model in packed, padding-free batches, and
only the answer rows meet the LM head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cd_fast.kernels.pack import TokenStore
from cd_fast.kernels.token_scores import token_scores
from cd_fast.models import chat_prompt

THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"


@torch.inference_mode()
def answer_losses(
    model: Any,
    tokenizer: Any,
    question: str,
    traces: list[str],
    answer: str,
    max_tokens_per_batch: int = 16384,
) -> np.ndarray:
    """Summed answer surprisal after each of `traces` (float64 [len(traces)])."""
    prompt = tokenizer(chat_prompt(tokenizer, question) + THINK_OPEN, add_special_tokens=False)
    suffix = tokenizer(THINK_CLOSE + answer, add_special_tokens=False)["input_ids"]
    bodies = tokenizer(traces, add_special_tokens=False)["input_ids"]
    head = prompt["input_ids"]
    # a trace past the model's context keeps its tail: the answer leans on the end most
    room = (
        (getattr(model.config, "max_position_embeddings", None) or 8192) - len(head) - len(suffix)
    )
    if room <= 0:
        raise ValueError(
            f"question and answer alone exceed the scorer's context ({question[:60]!r})"
        )
    sequences = [[*head, *body[-room:], *suffix] for body in bodies]
    device = model.get_output_embeddings().weight.device
    losses = np.zeros(len(sequences))
    start = 0
    while start < len(sequences):
        stop, tokens = start, 0
        while stop < len(sequences):
            if stop > start and tokens + len(sequences[stop]) > max_tokens_per_batch:
                break
            tokens += len(sequences[stop])
            stop += 1
        chunk = sequences[start:stop]
        batch = TokenStore(chunk, device=device).pack(range(len(chunk)))
        hidden = model.base_model(**batch.model_kwargs()).last_hidden_state[0]  # [T, H]
        ends = np.cumsum([len(s) for s in chunk])
        # answer token j of sequence b sits at ends[b] - len(suffix) + j, predicted one row earlier
        answer_rows = [np.arange(e - len(suffix) - 1, e - 1) for e in ends]
        rows = torch.as_tensor(np.concatenate(answer_rows), device=device)
        targets = batch.input_ids[0, rows + 1]
        surprisal = token_scores(hidden[rows], model.get_output_embeddings().weight, targets)
        per_sequence = surprisal.surprisal.double().cpu().numpy().reshape(len(chunk), len(suffix))
        losses[start:stop] = per_sequence.sum(axis=1)
        start = stop
    return losses


def answer_delta(
    model: Any,
    tokenizer: Any,
    question: str,
    trace: str,
    steps: np.ndarray,
    answer: str,
    max_tokens_per_batch: int = 16384,
) -> np.ndarray:
    """delta_i for each step (float32 [k]); higher = the answer leans on the step more."""
    variants = [trace] + [trace[:a] + trace[b:] for a, b in steps.tolist()]
    losses = answer_losses(model, tokenizer, question, variants, answer, max_tokens_per_batch)
    return (losses[1:] - losses[0]).astype(np.float32)
