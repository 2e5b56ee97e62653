"""Per-token surprisal and entropy under an LM head without materialising [T, V] logits.

surprisal_t = lse_t - x_{y_t} (= -log p(y_t), natural log) and entropy_t = lse_t - sum_v p_v x_v
for logits x = h_t W^T; the running-max recurrence is derived in `lm_head.py`, the family's
shared part. Targets of -100 score 0.

Two methods, picked by `method` (default "split", the faster one measured on an H100):

fused  One Triton kernel per [BLOCK_T, BLOCK_V] tile: the tile's logits are accumulated in
       registers (tensor cores, fp32 accumulators) and reduced in the epilogue to per-row partial
       statistics (m_j, s_j, a_j) over the tile's columns, plus the target logit in the one tile
       that holds it. A merge kernel combines the V / BLOCK_V partials of each row:
           m = max_j m_j,  s = sum_j s_j exp(m_j - m),  a = sum_j a_j exp(m_j - m)
       The logits never reach memory: the extra traffic is 12 bytes per (token, V tile).
       Tiles are visited in groups of GROUP_T token tiles so that a group's hidden rows stay in
       L2 while the group sweeps the vocabulary (the LM head is streamed T / (GROUP_T * BLOCK_T)
       times).
split  The logits of a chunk of tokens come from one cuBLAS GEMM with fp32 output
       (`torch.mm(..., out_dtype=float32)` for bf16/fp16 inputs), then one Triton program per
       row reduces them in a single read (`lm_head.reduce_rows`, shared with the loss). Extra
       memory is one chunk (under `max_chunk_bytes`, 512 MiB by default); the price is writing
       and re-reading 4V bytes per token. It is the CPU path (torch GEMM) and the fallback for
       fp32 inputs on a GPU.
bench/token_scores.py times both against the bare GEMM and Liger's fused kernel; on an H100
split was the faster (bench/results/token_scores.md): the Triton main loop (cp.async + wgmma,
no TMA, no warp specialisation) does not keep up with cuBLAS, so split is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from cd_fast.kernels import outputs
from cd_fast.kernels.lm_head import check_lm_head, chunk_rows, logits_fp32, reduce_rows
from cd_fast.kernels.outputs import IGNORE_INDEX, TokenScores
from cd_fast.runtime import triton_can_run

DEFAULT_MAX_CHUNK_BYTES = 512 << 20
# On a CPU the chunk's logits should stay in cache while they are reduced: 32 rows of a 49k
# vocabulary took 15 s per 100k tokens where whole 512 MiB chunks took 26 (2-core AMD EPYC)...
CPU_MAX_CHUNK_BYTES = 8 << 20
# ...but each chunk reads the whole [V, H] head again: below ~H/2 rows that costs more than the
# chunk's own logits (H 896, V 152k: 8 MiB chunks of 13 rows took 3x the time of 448-row ones)
CPU_MIN_ROWS_PER_HIDDEN = 0.5


def cpu_chunk_rows(tokens: int, vocab: int, hidden: int) -> int:
    """Rows per LM-head chunk on a CPU: cache-sized logits, unless the head is re-read too often."""
    floor = min(tokens, int(hidden * CPU_MIN_ROWS_PER_HIDDEN))
    return max(chunk_rows(tokens, 4 * vocab, CPU_MAX_CHUNK_BYTES), floor)


@triton.jit
def _token_scores_fused_kernel(
    p_hidden,
    p_weight,
    p_targets,
    p_stats,  # [3, n_blocks_v, T] fp32: tile max m, sum exp(x - m), sum exp(x - m) x
    p_target_logit,  # [T] fp32: x_y, written by the tile that holds y
    T,
    V,
    H,
    stride_ht,
    stride_wv,
    n_blocks_v,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    GROUP_T: tl.constexpr,
    IGNORE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    i_pid = tl.program_id(0)
    n_blocks_t = tl.cdiv(T, BLOCK_T)
    per_group = GROUP_T * n_blocks_v
    first_t = (i_pid // per_group) * GROUP_T
    group_size = tl.minimum(n_blocks_t - first_t, GROUP_T)
    i_t = first_t + (i_pid % per_group) % group_size
    i_v = (i_pid % per_group) // group_size

    o_t = i_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    o_v = i_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)  # [BLOCK_V]
    o_h = tl.arange(0, BLOCK_H)
    m_t = o_t < T
    m_v = o_v < V
    p_h = p_hidden + o_t[:, None] * stride_ht + o_h[None, :]  # [BLOCK_T, BLOCK_H]
    p_w = p_weight + o_v[None, :] * stride_wv + o_h[:, None]  # [BLOCK_H, BLOCK_V]
    b_x = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        m_h = h0 + o_h < H
        b_h = tl.load(p_h, mask=m_t[:, None] & m_h[None, :], other=0.0)
        b_w = tl.load(p_w, mask=m_h[:, None] & m_v[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 dot multiplies raw bits: exact in fp32 instead
            b_h, b_w = b_h.to(tl.float32), b_w.to(tl.float32)
        b_x = tl.dot(b_h, b_w, b_x, input_precision=PRECISION)  # [BLOCK_T, BLOCK_V]
        p_h += BLOCK_H
        p_w += BLOCK_H

    b_x = tl.where(m_v[None, :], b_x, float("-inf"))
    b_m = tl.max(b_x, axis=1)  # [BLOCK_T]
    b_e = tl.exp(b_x - b_m[:, None])  # 0 on the padding columns
    b_s = tl.sum(b_e, axis=1)
    b_a = tl.sum(tl.where(m_v[None, :], b_e * b_x, 0.0), axis=1)
    p_s = p_stats + i_v.to(tl.int64) * T + o_t
    tl.store(p_s, b_m, mask=m_t)
    tl.store(p_s + n_blocks_v * T, b_s, mask=m_t)
    tl.store(p_s + 2 * n_blocks_v * T, b_a, mask=m_t)

    b_y = tl.load(p_targets + o_t, mask=m_t, other=IGNORE)  # [BLOCK_T]; IGNORE < 0: no tile
    b_xy = tl.sum(tl.where(b_y[:, None] == o_v[None, :], b_x, 0.0), axis=1)
    m_y = m_t & (b_y >= i_v * BLOCK_V) & (b_y < (i_v + 1) * BLOCK_V)
    tl.store(p_target_logit + o_t, b_xy, mask=m_y)


@triton.jit
def _token_scores_merge_kernel(
    p_stats,
    p_target_logit,
    p_targets,
    p_surprisal,
    p_entropy,
    T,
    n_blocks_v,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IGNORE: tl.constexpr,
):
    i_t = tl.program_id(0)
    o_t = i_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    m_t = o_t < T
    b_m = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    b_s = tl.zeros((BLOCK_T,), dtype=tl.float32)
    b_a = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for n0 in range(0, n_blocks_v, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_nt = (o_n < n_blocks_v)[:, None] & m_t[None, :]
        p_s = p_stats + o_n[:, None].to(tl.int64) * T + o_t[None, :]  # [BLOCK_N, BLOCK_T]
        c_m = tl.load(p_s, mask=m_nt, other=float("-inf"))
        c_s = tl.load(p_s + n_blocks_v * T, mask=m_nt, other=0.0)
        c_a = tl.load(p_s + 2 * n_blocks_v * T, mask=m_nt, other=0.0)
        b_m_new = tl.maximum(b_m, tl.max(c_m, axis=0))
        b_scale = tl.exp(b_m - b_m_new)  # the first chunk holds every row's tile 0: finite
        c_w = tl.exp(c_m - b_m_new[None, :])
        b_s = b_s * b_scale + tl.sum(c_s * c_w, axis=0)
        b_a = b_a * b_scale + tl.sum(c_a * c_w, axis=0)
        b_m = b_m_new
    b_y = tl.load(p_targets + o_t, mask=m_t, other=IGNORE)
    skip = b_y == IGNORE
    b_lse = b_m + tl.log(b_s)
    b_xy = tl.load(p_target_logit + o_t, mask=m_t & ~skip, other=0.0)
    tl.store(p_surprisal + o_t, tl.where(skip, 0.0, b_lse - b_xy), mask=m_t)
    tl.store(p_entropy + o_t, tl.where(skip, 0.0, b_lse - b_a / b_s), mask=m_t)


@dataclass(frozen=True)
class FusedConfig:
    """Tile shape and launch options of the fused kernel."""

    block_t: int = 256
    block_v: int = 128
    block_h: int = 64
    num_warps: int = 8
    num_stages: int = 3
    group_bytes: int = 24 << 20
    """Hidden rows per group (GROUP_T token tiles) kept under this many bytes, to stay in L2."""


# Candidates the benchmark sweeps on the GPU; DEFAULT_FUSED is the one it measured fastest over
# H 1536 and 4096 on an H100 (bench/results/token_scores.md).
FUSED_CONFIGS = {
    "t128-v128-w8": FusedConfig(128, 128, 64, 8, 4),
    "t128-v128-w4": FusedConfig(128, 128, 64, 4, 4),
    "t128-v256-w8": FusedConfig(128, 256, 64, 8, 3),
    "t256-v128-w8": FusedConfig(256, 128, 64, 8, 3),
}
DEFAULT_FUSED = "t256-v128-w8"
METHODS = ("split", "fused")


def token_scores_fused_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    config: FusedConfig | None = None,
    max_stats_bytes: int = DEFAULT_MAX_CHUNK_BYTES // 2,
) -> TokenScores:
    """GEMM with the reduction in its epilogue, then the merge; see the module docstring.
    Tokens go in chunks whose partial statistics stay under `max_stats_bytes`."""
    config = config or FUSED_CONFIGS[DEFAULT_FUSED]
    tokens, size = hidden.shape
    vocab = weight.shape[0]
    n_blocks_v = triton.cdiv(vocab, config.block_v)
    chunk = max(config.block_t, max_stats_bytes // (12 * n_blocks_v))
    group_t = max(1, config.group_bytes // (config.block_t * size * hidden.element_size()))
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"  # tf32: ignored for bf16
    upcast = hidden.dtype == torch.bfloat16 and not hidden.is_cuda
    surprisal = outputs.empty((tokens,), torch.float32, hidden.device)
    entropy = outputs.empty((tokens,), torch.float32, hidden.device)
    for start in range(0, tokens, chunk):
        end = min(start + chunk, tokens)
        count = end - start
        stats = torch.empty(3, n_blocks_v, count, dtype=torch.float32, device=hidden.device)
        target_logit = torch.empty(count, dtype=torch.float32, device=hidden.device)
        grid = (triton.cdiv(count, config.block_t) * n_blocks_v,)
        _token_scores_fused_kernel[grid](
            hidden[start:end],
            weight,
            targets[start:end],
            stats,
            target_logit,
            count,
            vocab,
            size,
            hidden.stride(0),
            weight.stride(0),
            n_blocks_v,
            BLOCK_T=config.block_t,
            BLOCK_V=config.block_v,
            BLOCK_H=config.block_h,
            GROUP_T=group_t,
            IGNORE=IGNORE_INDEX,
            PRECISION=precision,
            UPCAST=upcast,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
        merge_t = 64
        _token_scores_merge_kernel[(triton.cdiv(count, merge_t),)](
            stats,
            target_logit,
            targets[start:end],
            surprisal[start:end],
            entropy[start:end],
            count,
            n_blocks_v,
            BLOCK_T=merge_t,
            BLOCK_N=32,
            IGNORE=IGNORE_INDEX,
        )
    return TokenScores(surprisal, entropy)


def token_scores_split_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    max_chunk_bytes: int | None = None,
) -> TokenScores:
    """Chunked GEMM + single-pass reduction (lm_head's shared parts); see the module docstring.
    Default chunks: 512 MiB of logits on a GPU, `cpu_chunk_rows` on a CPU."""
    tokens, vocab = hidden.shape[0], weight.shape[0]
    if chunk_size is None and max_chunk_bytes is None and hidden.device.type == "cpu":
        chunk_size = cpu_chunk_rows(tokens, vocab, hidden.shape[1])
    chunk_size = chunk_size or chunk_rows(
        tokens, 4 * vocab, max_chunk_bytes or DEFAULT_MAX_CHUNK_BYTES
    )
    surprisal = outputs.empty((tokens,), torch.float32, hidden.device)
    entropy = outputs.empty((tokens,), torch.float32, hidden.device)
    for start in range(0, tokens, chunk_size):
        end = min(start + chunk_size, tokens)
        logits = logits_fp32(hidden[start:end], weight)  # [chunk, V] fp32
        reduce_rows(logits, targets[start:end], surprisal[start:end], entropy[start:end])
        del logits
    return TokenScores(surprisal, entropy)


def _check_method(method: str, hidden: torch.Tensor) -> None:
    if method not in METHODS:
        raise ValueError(f"token_scores: method must be one of {METHODS}, got {method!r}")
    if method == "fused" and not triton_can_run(hidden.device):
        raise ValueError(
            f"token_scores: method='fused' needs a CUDA device or TRITON_INTERPRET=1, got "
            f"{hidden.device}"
        )


def token_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
    method: str = "split",
    fused_config: FusedConfig | None = None,
) -> TokenScores:
    """Surprisal and entropy of each target token under the LM head, fused with its GEMM.

    Args:
        hidden: [T, H] final hidden states (bf16, fp16 or fp32).
        weight: [V, H] LM-head weight (cast to hidden's dtype when they differ).
        targets: [T] int64 next-token ids; -100 skips a position (both scores 0).
        chunk_size: tokens per GEMM chunk of the split method; default keeps a chunk's fp32
            logits under 512 MiB on a GPU; on a CPU under 8 MiB (in cache) or H / 2 rows.
        method: "split" (cuBLAS GEMM per chunk + Triton reduction; the faster on an H100) or
            "fused" (the reduction in a Triton GEMM's epilogue).
        fused_config: tile shape of the fused kernel (default DEFAULT_FUSED).

    Returns:
        TokenScores(surprisal, entropy): float32 [T] each, natural log.
    """
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"token_scores: chunk_size must be > 0, got {chunk_size}")
    hidden, weight, targets = check_lm_head("token_scores", hidden, weight, targets)
    _check_method(method, hidden)
    if method == "fused":
        return token_scores_fused_fwd(hidden, weight, targets, fused_config)
    return token_scores_split_fwd(hidden, weight, targets, chunk_size)
