"""Depthwise causal conv1d over packed sequences: the short convolution of Gated-DeltaNet layers.

For channel d, kernel width W and token t of the sequence that starts at s(t):

    pre[t, d] = bias[d] + sum_{w<W} weight[d, w] * x[t - (W-1) + w, d] * [t - (W-1) + w >= s(t)]
    y[t, d]   = act(pre[t, d])                          act = silu or identity

so the convolution state resets at every sequence start: no token sees the previous sequence.
With g = dy * act'(pre) and e(u) the end of token u's sequence, the backward is

    dx[u, d]      = sum_{w<W} weight[d, w] * g[u + (W-1) - w, d] * [u + (W-1) - w < e(u)]
    dweight[d, w] = sum_t g[t, d] * x[t - (W-1) + w, d] * [t - (W-1) + w >= s(t)]
    dbias[d]      = sum_t g[t, d]

Each program handles a [BLOCK_T, BLOCK_D] tile of the channels-last [T, D] activations (the
layout the input projection writes, so loads are coalesced along D). A token's sequence bounds
come from a binary search of cu_seqlens inside the kernel: no host sync, no per-token index
tensor. The backward recomputes `pre` for the W tokens each input feeds (W * W tile loads, L1/L2
hits) rather than storing it, and reduces dweight and dbias per token tile in fp32; torch sums
the tiles.
"""

from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

from cd_fast.kernels import outputs
from cd_fast.runtime import kernel_fallback_once, triton_can_run

logger = logging.getLogger(__name__)

ACTIVATIONS = {None: 0, "silu": 1, "swish": 1}
# Tile shapes without register spills on sm_80/sm_90 (ptxas -v), widest first.
FWD_BLOCK_T, FWD_BLOCK_D, FWD_WARPS = 32, 128, 8
BWD_BLOCK_T, BWD_BLOCK_D, BWD_WARPS = 16, 128, 8
BWD_PROGRAMS_T = 64  # programs along T in the backward: dweight partials are 64 x D x W fp32


@triton.jit
def _sequence_bounds(p_cu_seqlens, o_t, N, SEARCH_STEPS):
    """Start and end of the packed sequence holding each token of o_t: the largest i < N with
    cu_seqlens[i] <= t, by binary search (SEARCH_STEPS = ceil(log2(N)) halvings)."""
    lo = tl.zeros_like(o_t)
    hi = tl.zeros_like(o_t) + (N - 1)
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi + 1) // 2
        go_right = tl.load(p_cu_seqlens + mid).to(tl.int64) <= o_t
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid - 1)
    start = tl.load(p_cu_seqlens + lo).to(tl.int64)
    end = tl.load(p_cu_seqlens + lo + 1).to(tl.int64)
    return start, end


@triton.jit
def _conv_tile(
    p_x,
    p_weight,
    o_t,
    start,
    o_d,
    m_t,
    m_d,
    stride_x,
    W: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """sum_w weight[d, w] * x[t - (W-1) + w, d] over the tile, zero before the sequence start."""
    b_acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for w in tl.static_range(W):
        o_src = o_t - (W - 1) + w
        m_src = m_t & (o_src >= start)
        b_x = tl.load(
            p_x + o_src[:, None] * stride_x + o_d[None, :],
            mask=m_src[:, None] & m_d[None, :],
            other=0.0,
        ).to(tl.float32)
        b_w = tl.load(p_weight + o_d * W + w, mask=m_d, other=0.0).to(tl.float32)  # [BLOCK_D]
        b_acc += b_x * b_w[None, :]
    return b_acc


@triton.jit
def _causal_conv1d_fwd_kernel(
    p_x,
    p_weight,
    p_bias,
    p_cu_seqlens,
    p_y,
    T,
    D,
    N,
    SEARCH_STEPS,
    stride_x,
    stride_y,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_t, i_d = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T]
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    m_t, m_d = o_t < T, o_d < D
    start, _ = _sequence_bounds(p_cu_seqlens, tl.minimum(o_t, T - 1), N, SEARCH_STEPS)

    b_pre = _conv_tile(p_x, p_weight, o_t, start, o_d, m_t, m_d, stride_x, W, BLOCK_T, BLOCK_D)
    if HAS_BIAS:
        b_pre += tl.load(p_bias + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    b_y = b_pre * tl.sigmoid(b_pre) if SILU else b_pre
    p_out = p_y + o_t[:, None] * stride_y + o_d[None, :]
    tl.store(p_out, b_y.to(p_y.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _causal_conv1d_bwd_kernel(
    p_x,
    p_weight,
    p_bias,
    p_cu_seqlens,
    p_dy,
    p_dx,
    p_dweight_parts,  # [cdiv(T_TILES, TILES_PER_PROGRAM), D, W] fp32
    p_dbias_parts,  # [cdiv(T_TILES, TILES_PER_PROGRAM), D] fp32
    T,
    D,
    N,
    SEARCH_STEPS,
    TILES_PER_PROGRAM,
    stride_x,
    stride_dy,
    stride_dx,
    W: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_g, i_d = tl.program_id(0), tl.program_id(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    o_w = tl.arange(0, BLOCK_W)  # [BLOCK_W]
    m_d = o_d < D
    if HAS_BIAS:
        b_bias = tl.load(p_bias + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_dweight = tl.zeros((BLOCK_D, BLOCK_W), dtype=tl.float32)
    b_dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)

    # consecutive token tiles per program: dweight/dbias partials stay a few MB, summed in order
    first = i_g * TILES_PER_PROGRAM
    last = tl.minimum(first + TILES_PER_PROGRAM, tl.cdiv(T, BLOCK_T))
    for i_t in range(first, last):
        o_u = i_t * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)  # [BLOCK_T] input tokens
        m_u = o_u < T
        start, end = _sequence_bounds(p_cu_seqlens, tl.minimum(o_u, T - 1), N, SEARCH_STEPS)
        b_dx = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(W):
            # output token t = u + j reads x[u] through weight[:, W-1-j]; same sequence iff t < e(u)
            o_t = o_u + j
            m_t = m_u & (o_t < end)
            b_g = tl.load(
                p_dy + o_t[:, None] * stride_dy + o_d[None, :],
                mask=m_t[:, None] & m_d[None, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_T, BLOCK_D]
            if SILU:
                b_pre = _conv_tile(
                    p_x, p_weight, o_t, start, o_d, m_t, m_d, stride_x, W, BLOCK_T, BLOCK_D
                )
                if HAS_BIAS:
                    b_pre += b_bias[None, :]
                b_sig = tl.sigmoid(b_pre)
                b_g = b_g * b_sig * (1.0 + b_pre * (1.0 - b_sig))
            b_w = tl.load(p_weight + o_d * W + (W - 1 - j), mask=m_d, other=0.0).to(tl.float32)
            b_dx += b_g * b_w[None, :]
            if j == 0:
                # the outputs t = u this tile owns give dweight and dbias
                for w in tl.static_range(W):
                    o_src = o_u - (W - 1) + w
                    m_src = m_u & (o_src >= start)
                    b_x = tl.load(
                        p_x + o_src[:, None] * stride_x + o_d[None, :],
                        mask=m_src[:, None] & m_d[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    b_sum = tl.sum(b_g * b_x, axis=0)  # [BLOCK_D]
                    b_dweight += tl.where(o_w[None, :] == w, b_sum[:, None], 0.0)
                b_dbias += tl.sum(b_g, axis=0)
        p_out = p_dx + o_u[:, None] * stride_dx + o_d[None, :]
        tl.store(p_out, b_dx.to(p_dx.dtype.element_ty), mask=m_u[:, None] & m_d[None, :])

    p_dw = p_dweight_parts + (i_g * D + o_d[:, None]) * W + o_w[None, :]
    tl.store(p_dw, b_dweight, mask=m_d[:, None] & (o_w[None, :] < W))
    if HAS_BIAS:
        tl.store(p_dbias_parts + i_g * D + o_d, b_dbias, mask=m_d)


def _search_steps(cu_seqlens: torch.Tensor) -> int:
    return max(1, math.ceil(math.log2(max(cu_seqlens.numel() - 1, 1))))


def causal_conv1d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    silu: bool,
) -> torch.Tensor:
    tokens, channels = x.shape
    y = outputs.empty((tokens, channels), x.dtype, x.device)
    grid = (triton.cdiv(tokens, FWD_BLOCK_T), triton.cdiv(channels, FWD_BLOCK_D))
    _causal_conv1d_fwd_kernel[grid](
        x,
        weight,
        bias if bias is not None else weight,
        cu_seqlens,
        y,
        tokens,
        channels,
        cu_seqlens.numel() - 1,
        _search_steps(cu_seqlens),
        x.stride(0),
        y.stride(0),
        W=weight.shape[1],
        HAS_BIAS=bias is not None,
        SILU=silu,
        BLOCK_T=FWD_BLOCK_T,
        BLOCK_D=FWD_BLOCK_D,
        num_warps=FWD_WARPS,
    )
    return y


def causal_conv1d_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    tokens, channels = x.shape
    width = weight.shape[1]
    tiles_per_program = triton.cdiv(triton.cdiv(tokens, BWD_BLOCK_T), BWD_PROGRAMS_T)
    parts = triton.cdiv(triton.cdiv(tokens, BWD_BLOCK_T), tiles_per_program)
    dx = outputs.empty((tokens, channels), x.dtype, x.device)
    dweight_parts = outputs.empty((parts, channels, width), torch.float32, x.device)
    dbias_parts = (
        outputs.empty((parts, channels), torch.float32, x.device) if bias is not None else None
    )
    _causal_conv1d_bwd_kernel[(parts, triton.cdiv(channels, BWD_BLOCK_D))](
        x,
        weight,
        bias if bias is not None else weight,
        cu_seqlens,
        dy,
        dx,
        dweight_parts,
        dbias_parts if dbias_parts is not None else dweight_parts,
        tokens,
        channels,
        cu_seqlens.numel() - 1,
        _search_steps(cu_seqlens),
        tiles_per_program,
        x.stride(0),
        dy.stride(0),
        dx.stride(0),
        W=width,
        BLOCK_W=triton.next_power_of_2(width),
        HAS_BIAS=bias is not None,
        SILU=silu,
        BLOCK_T=BWD_BLOCK_T,
        BLOCK_D=BWD_BLOCK_D,
        num_warps=BWD_WARPS,
    )
    dweight = dweight_parts.sum(0).to(weight.dtype)
    dbias = dbias_parts.sum(0).to(bias.dtype) if dbias_parts is not None else None
    return dx, dweight, dbias


class CausalConv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, cu_seqlens, silu):
        ctx.save_for_backward(x, weight, bias, cu_seqlens)
        ctx.silu = silu
        return causal_conv1d_fwd(x, weight, bias, cu_seqlens, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, cu_seqlens = ctx.saved_tensors
        dx, dweight, dbias = causal_conv1d_bwd(
            dy.contiguous(), x, weight, bias, cu_seqlens, ctx.silu
        )
        return dx, dweight, dbias, None, None


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution of packed sequences, each one's state starting at zero.

    Args:
        x: [T, D] packed activations, channels last (bf16, fp16 or fp32).
        weight: [D, W] per-channel kernel (W = 4 in Qwen3.5); bias: [D] or None.
        cu_seqlens: int32/int64 [N + 1] sequence boundaries (None: one sequence).
        activation: None or "silu" ("swish"), fused into the kernel.

    Returns:
        [T, D] in x's dtype; differentiable in x, weight and bias. CUDA (or TRITON_INTERPRET=1)
        runs the Triton kernel; elsewhere the torch reference (logged once).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"causal_conv1d_varlen: activation must be None or 'silu', got {activation!r}"
        )
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d_varlen: expected x [T, D] and weight [D, W], got {tuple(x.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(
            f"causal_conv1d_varlen: bias must be [D={x.shape[1]}], got {tuple(bias.shape)}"
        )
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, x.shape[0]], dtype=torch.int32, device=x.device)
    if not triton_can_run(x.device):
        kernel_fallback_once(logger, x.device, "causal_conv1d_varlen")
        from cd_fast.kernels.reference import causal_conv1d_varlen_ref

        return causal_conv1d_varlen_ref(x, weight, bias, cu_seqlens, activation)
    return CausalConv1dFunction.apply(
        x.contiguous(),
        weight.contiguous(),
        bias.contiguous() if bias is not None else None,
        cu_seqlens.contiguous(),
        ACTIVATIONS[activation] == 1,
    )
