"""Pure-torch references for the Triton kernels (used by tests, benchmarks and CPU fallbacks)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cd_fast.kernels.outputs import IGNORE_INDEX, PackedBatch, TokenScores


def pack_from_store_ref(
    store: torch.Tensor,
    src_offsets: Sequence[int],
    lengths: Sequence[int],
    prompt_lengths: Sequence[int],
    num_label_tokens: int | None = None,
) -> PackedBatch:
    """Reference of `pack_fwd`: the obvious per-sequence slicing and torch.cat. The label count
    is read back from the labels built unless the caller knows it (`pack_fwd`'s fallback: the
    step loop never waits on the device)."""
    pieces, labels, positions = [], [], []
    for offset, length, prompt in zip(src_offsets, lengths, prompt_lengths, strict=True):
        offset, length, prompt = int(offset), int(length), int(prompt)
        tokens = store[offset : offset + length].to(torch.int64)
        position = torch.arange(length, dtype=torch.int64, device=store.device)
        pieces.append(tokens)
        positions.append(position)
        labels.append(torch.where(position >= max(prompt, 1), tokens, IGNORE_INDEX))
    lengths_list = [int(n) for n in lengths]
    cu_seqlens = torch.tensor(np.concatenate([[0], np.cumsum(lengths_list)]), dtype=torch.int32)
    num_labels = num_label_tokens
    if num_labels is None:
        num_labels = int(sum(int((label != IGNORE_INDEX).sum()) for label in labels))
    return PackedBatch(
        input_ids=torch.cat(pieces)[None],
        labels=torch.cat(labels)[None],
        position_ids=torch.cat(positions)[None],
        cu_seqlens=cu_seqlens.to(store.device),
        max_seqlen=max(lengths_list),
        num_label_tokens=num_labels,
        seq_lengths=lengths_list,
    )


def pack_sequences_ref(
    sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int] | None = None
) -> PackedBatch:
    """Reference of `pack_sequences` on CPU."""
    arrays = [torch.as_tensor(np.asarray(s), dtype=torch.int64) for s in sequences]
    lengths = [a.numel() for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    prompts = prompt_lengths if prompt_lengths is not None else [0] * len(arrays)
    return pack_from_store_ref(torch.cat(arrays), offsets, lengths, prompts)


def token_scores_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> TokenScores:
    """Reference of `token_scores`: full [T, V] logits in `dtype`, log_softmax, gather."""
    logits = hidden.to(dtype) @ weight.to(dtype).t()
    log_probs = torch.log_softmax(logits, dim=-1)
    keep = targets != IGNORE_INDEX
    surprisal = -log_probs.gather(1, torch.where(keep, targets, 0)[:, None])[:, 0]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    zero = torch.zeros((), dtype=dtype, device=hidden.device)
    return TokenScores(torch.where(keep, surprisal, zero), torch.where(keep, entropy, zero))


def linear_cross_entropy_ref(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Reference of `linear_cross_entropy`: full float64 logits, cross entropy summed over the
    targets that are not -100 (differentiable: backward gives the reference gradients)."""
    logits = hidden.double() @ weight.double().t()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def causal_conv1d_varlen_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    activation: str | None = None,
) -> torch.Tensor:
    """Reference of `causal_conv1d_varlen`: each sequence alone through F.conv1d with W - 1 zeros
    of left padding (transformers' torch path, one sequence at a time). x [T, D], weight [D, W]."""
    width = weight.shape[1]
    pieces = []
    for start, end in itertools.pairwise(cu_seqlens.tolist()):
        if end == start:  # an empty sequence (static shapes' padding): nothing to convolve
            continue
        sequence = x[start:end].t()[None].to(weight.dtype)  # [1, D, L]
        out = F.conv1d(sequence, weight[:, None, :], bias, padding=width - 1, groups=x.shape[1])
        pieces.append(out[0, :, : end - start].t())
    y = torch.cat(pieces) if pieces else x.new_zeros((0, x.shape[1]), dtype=weight.dtype)
    if activation is not None:
        y = F.silu(y)
    return y.to(x.dtype)
