"""SPIRIT-style step importance (`Scorer.answer_delta`): how much harder the final answer becomes
for the scorer LM when one step is cut out of the trace.

For a trace with steps s_1..s_k and answer text a, with x the question prompt:

    delta_i = L(a | x, trace without s_i) - L(a | x, trace),   L = summed -log p of a's tokens

All k + 1 sequences go through the model in packed, padding-free batches, and only the answer
rows meet the LM head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cd_fast.kernels.pack import TokenStore
from cd_fast.kernels.token_scores import token_scores
from cd_fast.runtime import token_batches


@torch.inference_mode()
def answer_losses(
    model: Any,
    tokenizer: Any,
    prompt: str,
    traces: list[str],
    suffix: str,
    max_tokens_per_batch: int = 16384,
) -> np.ndarray:
    """Summed surprisal of the `suffix` tokens (the answer) after prompt + each of `traces`
    (float64 [len(traces)])."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    bodies = tokenizer(traces, add_special_tokens=False)["input_ids"]
    # a trace past the model's context keeps its tail: the answer leans on the end most
    context = getattr(model.config, "max_position_embeddings", None) or 8192
    room = context - len(head) - len(suffix_ids)
    if room <= 0:
        raise ValueError(f"prompt and answer alone exceed the scorer's context ({prompt[:60]!r})")
    sequences = [[*head, *body[-room:], *suffix_ids] for body in bodies]
    device = model.get_output_embeddings().weight.device
    head_weight = model.get_output_embeddings().weight
    losses = np.zeros(len(sequences))
    for batch_range in token_batches([len(s) for s in sequences], max_tokens_per_batch):
        chunk = [sequences[i] for i in batch_range]
        batch = TokenStore(chunk, device=device).pack(range(len(chunk)))
        hidden = model.base_model(**batch.model_kwargs()).last_hidden_state[0]  # [T, H]
        ends = np.cumsum([len(s) for s in chunk])
        # answer token j of sequence b sits at ends[b] - len(suffix) + j, predicted one row earlier
        answer_rows = [np.arange(e - len(suffix_ids) - 1, e - 1) for e in ends]
        rows = torch.as_tensor(np.concatenate(answer_rows), device=device)
        targets = batch.input_ids[0, rows + 1]
        scores = token_scores(hidden[rows], head_weight, targets)
        per_sequence = scores.surprisal.double().cpu().numpy().reshape(len(chunk), -1)
        losses[batch_range.start : batch_range.stop] = per_sequence.sum(axis=1)
    return losses
