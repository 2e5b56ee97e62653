"""What the kernels return (`PackedBatch`, `TokenScores`; labels use IGNORE_INDEX), shared with
their torch references, and where every launcher allocates its outputs: `empty`, in one place so
tests can poison it (fill the outputs with NaN or a sentinel, so an element a kernel never
writes fails the comparison). Launchers call it as `outputs.empty(...)`, never importing the
name, so a patch reaches them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

IGNORE_INDEX = -100
# The model keyword that carries a packed batch's boundaries as host ints to cd_fast's varlen
# attention (its sdpa backend splits sequences on the host; transformers passes it through).
HOST_CU_SEQLENS = "cd_fast_host_cu_seqlens"
# The model keyword that tells the sdpa backend a batch has static shapes: one masked SDPA call
# over the whole row, its boundaries read on the device (no host list for compile to guard on).
STATIC_SHAPES = "cd_fast_static_shapes"


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


class TokenScores(NamedTuple):
    surprisal: torch.Tensor
    """float32 [T]: -log p(target), natural log; 0 where the target is -100."""
    entropy: torch.Tensor
    """float32 [T]: entropy of the next-token distribution; 0 where the target is -100."""


@dataclass(frozen=True)
class StaticShape:
    """The sizes every packed batch of a run is padded to, so that torch.compile and CUDA
    graphs see one shape: `tokens` per row, `sequences` boundaries (cu_seqlens has sequences + 1
    entries) and `max_seqlen`. Padding is whole sequences without labels (each attends to
    itself only), then empty sequences."""

    tokens: int
    sequences: int
    max_seqlen: int


@dataclass
class PackedBatch:
    """One padding-free batch: B sequences laid end to end in a single row of T tokens.

    input_ids, labels, position_ids: int64 [1, T] (labels -100 on prompts and sequence starts);
    cu_seqlens: int32 [B + 1] sequence boundaries; max_seqlen, num_label_tokens, seq_lengths:
    host values, so the step loop never reads them back from the device.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    num_label_tokens: int
    seq_lengths: list[int]
    static: bool = False
    """Padded to a StaticShape: sequences without labels, then empty ones, fill it."""

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an HF causal LM running cd_fast's varlen attention.

        The all-true 2D attention mask stops transformers from probing position_ids for packed
        sequences (a host sync); the attention reads the boundaries from cu_seq_lens_* (and, for
        its host-side sdpa backend off CUDA, from HOST_CU_SEQLENS). No KV cache: training and
        scoring never reuse it.
        """
        kwargs = {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": torch.ones_like(self.input_ids, dtype=torch.bool),
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
            "use_cache": False,
        }
        if self.input_ids.device.type == "cuda":
            return kwargs  # the CUDA backends take the device boundaries
        if self.static:  # a list would be a per-step guard for compiled blocks
            kwargs[STATIC_SHAPES] = True
        else:
            kwargs[HOST_CU_SEQLENS] = [0, *itertools.accumulate(self.seq_lengths)]
        return kwargs
