"""Per-token surprisal and entropy under an LM head without materialising [T, V] logits.

For token t with logits x = h_t W^T (x in R^V) and target y_t:

    lse_t       = log sum_v exp(x_v)
    surprisal_t = lse_t - x_{y_t}                    (= -log p(y_t), natural log)
    entropy_t   = -sum_v p_v log p_v = lse_t - sum_v p_v x_v

One pass over vocabulary tiles keeps a running max m, s = sum exp(x - m) and
a = sum exp(x - m) x; a new max m' rescales both by exp(m - m'). At the end lse = m + log s and
sum p x = a / s. Targets of -100 score 0.

Design (GEMM in cuBLAS per token chunk, reduction in Triton): the logits of one chunk of tokens
come from one cuBLAS GEMM with fp32 output (`torch.mm(..., out_dtype=float32)` for bf16/fp16
inputs), then this kernel reduces the chunk in a single read. Extra memory is one chunk:
chunk_size x V x 4 bytes, chosen to stay under `max_chunk_bytes` (512 MiB by default, about 2.5% of
what eager's logits + log_softmax take at T=16k, V=152k). The price is re-reading the chunk:
4V bytes per token against 2HV FLOPs, so at 3 TB/s and ~790 TFLOP/s the reduction adds about
525/H of the bare GEMM time (~1.34x at H=1536, ~1.13x at H=4096). A GEMM with the reduction fused
into its epilogue would remove that read; it needs split-V partial statistics and tuning on the
GPU, and no GPU was available when this was written: bench/token_scores.py measures the ratio.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_MAX_CHUNK_BYTES = 512 << 20


class TokenScores(NamedTuple):
    surprisal: torch.Tensor
    """float32 [T]: -log p(target), natural log; 0 where the target is -100."""
    entropy: torch.Tensor
    """float32 [T]: entropy of the next-token distribution; 0 where the target is -100."""


@triton.jit
def _token_scores_kernel(
    p_logits,
    p_targets,
    p_surprisal,
    p_entropy,
    V,
    stride_t,
    BLOCK_V: tl.constexpr,
    IGNORE: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    y = tl.load(p_targets + i_t)
    skip = y == IGNORE
    p_row = p_logits + i_t * stride_t
    b_m = tl.full((), float("-inf"), dtype=tl.float32)
    b_s = tl.zeros((), dtype=tl.float32)
    b_a = tl.zeros((), dtype=tl.float32)
    for v0 in range(0, tl.where(skip, 0, V), BLOCK_V):  # skipped rows read nothing
        o_v = v0 + tl.arange(0, BLOCK_V)
        m_v = o_v < V
        b_x = tl.load(p_row + o_v, mask=m_v, other=float("-inf")).to(tl.float32)  # [BLOCK_V]
        b_m_new = tl.maximum(b_m, tl.max(b_x, axis=0))
        b_scale = tl.exp(b_m - b_m_new)
        b_e = tl.exp(b_x - b_m_new)
        b_s = b_s * b_scale + tl.sum(b_e, axis=0)
        b_a = b_a * b_scale + tl.sum(b_e * tl.where(m_v, b_x, 0.0), axis=0)
        b_m = b_m_new
    b_s = tl.where(skip, 1.0, b_s)  # skipped rows: keep the arithmetic finite, output 0 below
    b_lse = tl.where(skip, 0.0, b_m) + tl.log(b_s)
    b_target = tl.load(p_row + tl.where(skip, 0, y)).to(tl.float32)
    tl.store(p_surprisal + i_t, tl.where(skip, 0.0, b_lse - b_target))
    tl.store(p_entropy + i_t, tl.where(skip, 0.0, b_lse - b_a / b_s))


def _reduce_chunk_torch(logits: torch.Tensor, targets: torch.Tensor, out: TokenScores) -> None:
    """The same reduction in torch (CPU without the Triton interpreter)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    keep = targets != IGNORE_INDEX
    safe = torch.where(keep, targets, 0)
    surprisal = -log_probs.gather(1, safe[:, None])[:, 0]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    out.surprisal.copy_(torch.where(keep, surprisal, 0.0))
    out.entropy.copy_(torch.where(keep, entropy, 0.0))


@functools.cache
def _mm_has_out_dtype(device_type: str) -> bool:
    """Whether this torch build has a bf16-in, fp32-out GEMM on the device (probed once)."""
    probe = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
    try:
        torch.mm(probe, probe, out_dtype=torch.float32)
    except (TypeError, RuntimeError) as error:  # unknown keyword / no kernel for the device
        reason = str(error).splitlines()[0][:160]
        logger.info(
            "torch.mm(out_dtype=float32) unavailable on %s (%s): upcasting the operands to fp32 "
            "for the LM-head GEMM", device_type, reason,
        )  # fmt: skip
        return False
    return True


def _logits_fp32(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden [t, H] @ weight[V, H]^T with fp32 accumulation and output."""
    if hidden.dtype == torch.float32:
        return hidden @ weight.t()
    if _mm_has_out_dtype(hidden.device.type):
        return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
    # No low-precision-in, fp32-out GEMM here (CPU): upcast (CPU matmuls accumulate in fp32).
    return hidden.float() @ weight.float().t()


_logged_fallback = False


def _empty(size: int, device: torch.device) -> torch.Tensor:
    """Output allocation (one place, so tests can poison it)."""
    return torch.empty(size, dtype=torch.float32, device=device)


def token_scores_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> TokenScores:
    """Chunked GEMM + single-pass reduction; see the module docstring."""
    global _logged_fallback
    tokens, vocab = hidden.shape[0], weight.shape[0]
    if chunk_size is None:
        chunk_size = max(1, min(tokens, max_chunk_bytes // (4 * vocab)))
    surprisal = _empty(tokens, hidden.device)
    entropy = _empty(tokens, hidden.device)
    use_triton = hidden.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    if not use_triton and not _logged_fallback:
        logger.warning(
            "token_scores: Triton needs a CUDA device (or TRITON_INTERPRET=1); reducing with "
            "torch on %s",
            hidden.device,
        )
        _logged_fallback = True
    block_v = min(4096, triton.next_power_of_2(vocab))
    if weight.dtype != hidden.dtype and hidden.dtype != torch.float32:
        weight = weight.to(hidden.dtype)
    if hidden.dtype == torch.float32 and weight.dtype != torch.float32:
        weight = weight.float()
    for start in range(0, tokens, chunk_size):
        end = min(start + chunk_size, tokens)
        logits = _logits_fp32(hidden[start:end], weight)  # [chunk, V] fp32
        chunk_targets = targets[start:end]
        if use_triton:
            _token_scores_kernel[(end - start,)](
                logits,
                chunk_targets,
                surprisal[start:end],
                entropy[start:end],
                vocab,
                logits.stride(0),
                BLOCK_V=block_v,
                IGNORE=IGNORE_INDEX,
            )
        else:
            _reduce_chunk_torch(
                logits, chunk_targets, TokenScores(surprisal[start:end], entropy[start:end])
            )
        del logits
    return TokenScores(surprisal, entropy)


def token_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> TokenScores:
    """Surprisal and entropy of each target token under the LM head, fused with its GEMM.

    Args:
        hidden: [T, H] final hidden states (bf16, fp16 or fp32).
        weight: [V, H] LM-head weight (cast to hidden's dtype when they differ).
        targets: [T] int64 next-token ids; -100 skips a position (both scores 0).
        chunk_size: tokens per GEMM chunk; default keeps a chunk's fp32 logits under 512 MiB.

    Returns:
        TokenScores(surprisal, entropy): float32 [T] each, natural log.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"token_scores: expected hidden [T, H] and weight [V, H], got {tuple(hidden.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if targets.shape != (hidden.shape[0],):
        raise ValueError(
            f"token_scores: targets must be [T={hidden.shape[0]}], got {targets.shape}"
        )
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"token_scores: hidden must be bf16, fp16 or fp32, got {hidden.dtype}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"token_scores: chunk_size must be > 0, got {chunk_size}")
    targets = targets.to(device=hidden.device, dtype=torch.int64).contiguous()
    valid = ((targets >= 0) & (targets < weight.shape[0])) | (targets == IGNORE_INDEX)
    torch._assert_async(valid.all(), "token_scores: targets must be in [0, V) or -100")
    return token_scores_fwd(hidden.contiguous(), weight.contiguous(), targets, chunk_size)
