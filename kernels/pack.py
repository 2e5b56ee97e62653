"""Packing variable-length sequences into one flat, padding-free batch in one kernel launch.

For packed sequence b with source offset s_b in the token store, length n_b, prompt length p_b
and destination d_b = n_0 + ... + n_{b-1}, for t in [0, n_b):

    input_ids[d_b + t]    = store[s_b + t]
    position_ids[d_b + t] = t
    labels[d_b + t]       = store[s_b + t] if t >= max(p_b, 1) else -100
    cu_seqlens[b + 1]     = d_b + n_b,  cu_seqlens[0] = 0

Labels follow transformers' convention (aligned with input_ids; the model shifts them), so -100
on every sequence's first token keeps the loss from crossing a boundary. Lengths, destinations
and max_seqlen are known on the host (the planner chose them), so nothing here syncs the device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import triton
import triton.language as tl

from cd_fast.kernels import outputs
from cd_fast.kernels.outputs import IGNORE_INDEX, PackedBatch, StaticShape
from cd_fast.runtime import kernel_fallback_once, triton_can_run

logger = logging.getLogger(__name__)


@triton.jit
def _pack_kernel(
    p_store,
    p_meta,  # [4, B] int64: source offset, length, prompt length, destination offset
    p_input_ids,
    p_labels,
    p_position_ids,
    p_cu_seqlens,
    B,
    BLOCK_T: tl.constexpr,
    IGNORE: tl.constexpr,
):
    i_b = tl.program_id(0)
    i_t = tl.program_id(1)
    src = tl.load(p_meta + i_b).to(tl.int64)
    n = tl.load(p_meta + B + i_b).to(tl.int64)
    prompt = tl.load(p_meta + 2 * B + i_b).to(tl.int64)
    dst = tl.load(p_meta + 3 * B + i_b).to(tl.int64)

    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T]
    m_t = o_t < n
    b_tokens = tl.load(p_store + src + o_t, mask=m_t, other=0).to(tl.int64)
    tl.store(p_input_ids + dst + o_t, b_tokens, mask=m_t)
    tl.store(p_position_ids + dst + o_t, o_t, mask=m_t)
    b_labels = tl.where(o_t >= tl.maximum(prompt, 1), b_tokens, IGNORE)
    tl.store(p_labels + dst + o_t, b_labels, mask=m_t)
    if i_t == 0:
        tl.store(p_cu_seqlens + i_b + 1, (dst + n).to(tl.int32))
        if i_b == 0:
            tl.store(p_cu_seqlens, tl.zeros((), dtype=tl.int32))


def label_token_count(lengths: Sequence[int], prompt_lengths: Sequence[int]) -> int:
    """Tokens that carry a label in packed sequences: all but the prompt's, and never a
    sequence's first token (nothing before it predicts it). A prompt length <= 0 (a slice that
    starts inside the target) leaves only that first token out."""
    lengths_np = np.asarray(lengths, dtype=np.int64)
    prompts_np = np.asarray(prompt_lengths, dtype=np.int64)
    return int(np.maximum(lengths_np - np.maximum(prompts_np, 1), 0).sum())


def static_padding(
    lengths: np.ndarray, shape: StaticShape, piece: int
) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, prompt lengths) of the sequences that pad a batch of `lengths` to `shape`:
    label-free sequences of at most `piece` tokens up to shape.tokens, then empty ones up to
    shape.sequences. A batch that does not fit the shape is an error (the planner sized it)."""
    spare = shape.tokens - int(lengths.sum())
    pieces = -(-spare // piece) if spare > 0 else 0
    fill = np.full(pieces, piece, dtype=np.int64)
    if pieces:
        fill[-1] = spare - piece * (pieces - 1)
    empty = shape.sequences - len(lengths) - pieces
    if spare < 0 or empty < 0 or int(lengths.max()) > shape.max_seqlen:
        raise ValueError(
            f"pack: {len(lengths)} sequences of {int(lengths.sum())} tokens (longest "
            f"{int(lengths.max())}) do not fit the static shape {shape}"
        )
    padding = np.concatenate([fill, np.zeros(empty, dtype=np.int64)])
    return padding, padding.copy()  # prompt = the whole sequence: no labels


def pack_fwd(
    store: torch.Tensor,
    src_offsets: Sequence[int],
    lengths: Sequence[int],
    prompt_lengths: Sequence[int],
    block_t: int = 1024,
    shape: StaticShape | None = None,
) -> PackedBatch:
    """Launch the pack kernel: gather `lengths[b]` tokens from `store` at `src_offsets[b]`
    (padded to `shape` with label-free copies of the store's first tokens, when given)."""
    count = len(lengths)
    if count == 0:
        raise ValueError("pack: no sequences to pack")
    lengths_np = np.asarray(lengths, dtype=np.int64)
    if (lengths_np <= 0).any():
        raise ValueError("pack: every sequence needs at least one token")
    prompts_np = np.asarray(prompt_lengths, dtype=np.int64)
    src_np = np.asarray(src_offsets, dtype=np.int64)
    num_label_tokens = label_token_count(lengths_np, prompts_np)
    max_seqlen = int(lengths_np.max())
    if shape is not None:
        piece = min(shape.max_seqlen, store.numel())
        padding, padding_prompts = static_padding(lengths_np, shape, piece)
        src_np = np.concatenate([src_np, np.zeros_like(padding)])
        lengths_np = np.concatenate([lengths_np, padding])
        prompts_np = np.concatenate([prompts_np, padding_prompts])
        count, max_seqlen = len(lengths_np), shape.max_seqlen
    destinations = np.zeros(count, dtype=np.int64)
    np.cumsum(lengths_np[:-1], out=destinations[1:])
    total = int(lengths_np.sum())
    device = store.device

    if not triton_can_run(device):
        kernel_fallback_once(logger, device, "pack_sequences")
        from cd_fast.kernels.reference import pack_from_store_ref

        batch = pack_from_store_ref(store, src_np, lengths_np, prompts_np, num_label_tokens)
        return replace(batch, max_seqlen=max_seqlen, static=shape is not None)

    meta_host = torch.from_numpy(np.stack([src_np, lengths_np, prompts_np, destinations]))
    if device.type == "cuda":
        meta = meta_host.pin_memory().to(device, non_blocking=True)
    else:
        meta = meta_host
    input_ids = outputs.empty((1, total), torch.int64, device)
    labels = outputs.empty((1, total), torch.int64, device)
    position_ids = outputs.empty((1, total), torch.int64, device)
    cu_seqlens = outputs.empty((count + 1,), torch.int32, device)
    block = min(block_t, triton.next_power_of_2(max(1, max_seqlen)))
    grid = (count, triton.cdiv(max_seqlen, block))
    _pack_kernel[grid](
        store,
        meta,
        input_ids,
        labels,
        position_ids,
        cu_seqlens,
        count,
        BLOCK_T=block,
        IGNORE=IGNORE_INDEX,
    )
    return PackedBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
        num_label_tokens=num_label_tokens,
        seq_lengths=lengths_np.tolist(),
        static=shape is not None,
    )


class TokenStore:
    """A tokenised dataset as one flat tensor plus host offsets, moved to the device once.

    Args:
        sequences: token ids per sample (lists, 1-D arrays or tensors).
        prompt_lengths: prompt tokens per sample (no loss on them); default 0.
        device: where the store (and every batch packed from it) lives.
        dtype: torch.int64, or torch.int32 to halve the store (vocabularies < 2**31).
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor],
        prompt_lengths: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.int64,
    ):
        if dtype not in (torch.int64, torch.int32):
            raise ValueError(f"TokenStore dtype must be torch.int64 or torch.int32, got {dtype}")
        arrays = [np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s) for s in sequences]
        for index, array in enumerate(arrays):
            if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
                raise ValueError(f"sequences[{index}]: expected a 1-D sequence of token ids")
        self.lengths = np.array([a.size for a in arrays], dtype=np.int64)
        self.offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        if prompt_lengths is None:
            self.prompt_lengths = np.zeros(len(arrays), dtype=np.int64)
        else:
            self.prompt_lengths = np.asarray(prompt_lengths, dtype=np.int64)
            if self.prompt_lengths.shape != self.lengths.shape:
                raise ValueError(
                    f"prompt_lengths has {self.prompt_lengths.size} entries for {len(arrays)} "
                    "sequences"
                )
            if (self.prompt_lengths < 0).any():
                raise ValueError("prompt_lengths must be >= 0")
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() > torch.iinfo(dtype).max):
            raise ValueError(f"token ids must lie in [0, {torch.iinfo(dtype).max}] for {dtype}")
        tensor = torch.from_numpy(flat.astype(np.int64)).to(dtype)
        self.tokens = tensor.to(device if device is not None else "cpu")

    def __len__(self) -> int:
        return int(self.lengths.size)

    def pack(
        self,
        indices: Sequence[int],
        starts: Sequence[int] | None = None,
        stops: Sequence[int] | None = None,
        shape: StaticShape | None = None,
    ) -> PackedBatch:
        """Pack samples `indices` (optionally only tokens [starts[i], stops[i]) of each; a slice
        that starts past the prompt has no prompt, and its first token still carries no loss),
        padded to `shape` when given (see StaticShape)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"pack: sample index out of range [0, {len(self)})")
        empty = idx[self.lengths[idx] == 0]
        if empty.size:
            raise ValueError(
                f"pack: sample {int(empty[0])} is empty; every sequence needs at least one token"
            )
        begin = np.zeros_like(idx) if starts is None else np.asarray(starts, dtype=np.int64)
        end = self.lengths[idx] if stops is None else np.asarray(stops, dtype=np.int64)
        if ((begin < 0) | (end > self.lengths[idx]) | (begin >= end)).any():
            raise ValueError("pack: each slice needs 0 <= start < stop <= length")
        prompts = np.maximum(self.prompt_lengths[idx] - begin, 0)
        return pack_fwd(self.tokens, self.offsets[idx] + begin, end - begin, prompts, shape=shape)


def pack_sequences(
    sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor],
    prompt_lengths: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> PackedBatch:
    """Pack variable-length token sequences into one padding-free batch.

    Args:
        sequences: B token-id sequences (lists, 1-D arrays or tensors), each non-empty.
        prompt_lengths: B prompt lengths; labels are -100 on prompt tokens. Default 0.
        device: target device (CUDA runs the Triton kernel; CPU runs it under
            TRITON_INTERPRET=1, else the torch reference, logged once).

    Returns:
        PackedBatch with int64 [1, T] input_ids/labels/position_ids, int32 [B + 1] cu_seqlens
        and host max_seqlen / num_label_tokens / seq_lengths.
    """
    store = TokenStore(sequences, prompt_lengths, device)
    return store.pack(range(len(store)))
