"""What every LM-head kernel of cd_fast shares: chunk sizing from a memory budget, the GEMM with
fp32 output, and the row reduction over a chunk's logits. Two users: `token_scores` (surprisal
and entropy, for scoring) and `linear_cross_entropy` (the training loss and its gradients).

For token t with logits x = h_t W^T (x in R^V) and target y_t, one pass over vocabulary tiles
keeps a running max m, s = sum exp(x - m) and, for the entropy, a = sum exp(x - m) x; a new max
m' rescales both by exp(m - m'). At the end

    lse_t = m + log s,   nll_t = lse_t - x_{y_t},   entropy_t = lse_t - a / s

and, for the loss's gradient, a second pass writes dnll_t / dx = softmax(x) - onehot(y_t) =
exp(x - lse_t) - [v == y_t], in the dtype of the GEMMs that consume it. Targets of -100 give 0
everywhere (statistics and gradient rows).
"""

from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl

from cd_fast.kernels.outputs import IGNORE_INDEX
from cd_fast.runtime import kernel_fallback_once, triton_can_run

logger = logging.getLogger(__name__)

MAX_BLOCK_V = 4096


@triton.jit
def _lm_head_rows_kernel(
    p_logits,
    p_targets,
    p_nll,
    p_entropy,
    p_grad,  # may alias p_logits (fp32 gradients overwrite the logits they come from)
    V,
    stride_t,
    stride_g,
    BLOCK_V: tl.constexpr,
    IGNORE: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    HAS_GRAD: tl.constexpr,
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
        if HAS_ENTROPY:
            b_a = b_a * b_scale + tl.sum(b_e * tl.where(m_v, b_x, 0.0), axis=0)
        b_m = b_m_new
    b_s = tl.where(skip, 1.0, b_s)  # skipped rows: keep the arithmetic finite, output 0 below
    b_lse = tl.where(skip, 0.0, b_m) + tl.log(b_s)
    b_target = tl.load(p_row + tl.where(skip, 0, y)).to(tl.float32)
    tl.store(p_nll + i_t, tl.where(skip, 0.0, b_lse - b_target))
    if HAS_ENTROPY:
        tl.store(p_entropy + i_t, tl.where(skip, 0.0, b_lse - b_a / b_s))
    if HAS_GRAD:
        p_g = p_grad + i_t * stride_g
        n_read = tl.where(skip, 0, V)  # skipped rows write zeros without reading
        for v0 in range(0, V, BLOCK_V):
            o_v = v0 + tl.arange(0, BLOCK_V)
            m_v = o_v < V
            b_x = tl.load(p_row + o_v, mask=o_v < n_read, other=float("-inf")).to(tl.float32)
            b_g = tl.exp(b_x - b_lse) - tl.where(o_v == y, 1.0, 0.0)  # [BLOCK_V]
            b_g = tl.where(skip, 0.0, b_g)
            tl.store(p_g + o_v, b_g.to(p_g.dtype.element_ty), mask=m_v)


def _rows_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    nll: torch.Tensor,
    entropy: torch.Tensor | None,
    grad: torch.Tensor | None,
) -> None:
    """The same reduction in torch (CPU without the Triton interpreter), in place over `logits`
    (a chunk's scratch buffer), one exponential per logit: with z the logits less their row
    max, s = sum(exp z), nll = log s - z[target], entropy = log s - sum(exp(z) z) / s, and the
    gradient exp(z) / s - onehot. One [n, V] temporary at most (exp z, when the entropy still
    needs z)."""
    keep = targets != IGNORE_INDEX
    safe = torch.where(keep, targets, 0)
    shifted = logits.sub_(logits.amax(dim=-1, keepdim=True))  # <= 0: exp cannot overflow
    target = shifted.gather(1, safe[:, None])[:, 0]
    exps = shifted.exp() if entropy is not None else shifted.exp_()
    total = exps.sum(dim=-1)
    log_total = total.log()
    nll.copy_(torch.where(keep, log_total - target, 0.0))
    if entropy is not None:  # sum(exp(z) z) as a batched dot product: no [n, V] product
        dots = torch.bmm(exps[:, None, :], shifted[:, :, None])[:, 0, 0]
        entropy.copy_(torch.where(keep, log_total - dots / total, 0.0))
    if grad is not None:
        probs = exps.div_(total[:, None])
        probs.scatter_add_(1, safe[:, None], -keep[:, None].to(probs.dtype))
        probs.mul_(keep[:, None])
        if grad.data_ptr() != probs.data_ptr():  # fp32 gradients overwrite the logits
            grad.copy_(probs)


def reduce_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    nll: torch.Tensor,
    entropy: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
) -> None:
    """Per row of `logits` [n, V] (fp32, a scratch buffer: its values may be overwritten): nll
    [n] and, when given, entropy [n] and the gradient of nll w.r.t. the logits into grad [n, V]
    (may be `logits` itself). Triton on CUDA (or under the interpreter), torch elsewhere (logged
    once)."""
    rows, vocab = logits.shape
    if rows == 0:
        return
    if not triton_can_run(logits.device):
        kernel_fallback_once(logger, logits.device, "lm_head rows")
        _rows_torch(logits, targets, nll, entropy, grad)
        return
    _lm_head_rows_kernel[(rows,)](
        logits,
        targets,
        nll,
        entropy if entropy is not None else nll,
        grad if grad is not None else logits,
        vocab,
        logits.stride(0),
        grad.stride(0) if grad is not None else 0,
        BLOCK_V=min(MAX_BLOCK_V, triton.next_power_of_2(vocab)),
        IGNORE=IGNORE_INDEX,
        HAS_ENTROPY=entropy is not None,
        HAS_GRAD=grad is not None,
    )


def chunk_rows(tokens: int, bytes_per_row: int, max_chunk_bytes: int) -> int:
    """Rows per chunk: as many as fit `max_chunk_bytes` (at least 1, at most `tokens`)."""
    return max(1, min(tokens, max_chunk_bytes // max(1, bytes_per_row)))


@functools.cache
def mm_has_out_dtype(device_type: str) -> bool:
    """Whether this torch build has a bf16-in, fp32-out GEMM on the device (probed once)."""
    probe = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
    try:
        torch.mm(probe, probe, out_dtype=torch.float32)
    except (TypeError, RuntimeError) as error:  # NotImplementedError is a RuntimeError
        reason = str(error).splitlines()[0][:160]
        logger.info(
            "torch.mm(out_dtype=float32) unavailable on %s (%s): upcasting the operands to fp32 "
            "for the LM-head GEMM",
            device_type,
            reason,
        )
        return False
    return True


def logits_fp32(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden [t, H] @ weight[V, H]^T with fp32 accumulation and output."""
    if hidden.dtype == torch.float32:
        return hidden @ weight.t()
    if mm_has_out_dtype(hidden.device.type):
        return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
    # No low-precision-in, fp32-out GEMM here (CPU): upcast (CPU matmuls accumulate in fp32).
    return hidden.float() @ weight.float().t()


def check_lm_head(name: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """The shapes and dtypes every LM-head kernel takes; returns (hidden, weight, targets)
    contiguous, weight in hidden's dtype, targets int64 on hidden's device (their range checked
    on the device, no host sync)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{name}: expected hidden [T, H] and weight [V, H], got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if targets.shape != (hidden.shape[0],):
        raise ValueError(
            f"{name}: targets must be [T={hidden.shape[0]}], got {tuple(targets.shape)}"
        )
    if hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"{name}: hidden must be bf16, fp16 or fp32, got {hidden.dtype}")
    targets = targets.to(device=hidden.device, dtype=torch.int64).contiguous()
    valid = ((targets >= 0) & (targets < weight.shape[0])) | (targets == IGNORE_INDEX)
    torch._assert_async(valid.all(), f"{name}: targets must be in [0, V) or -100")
    return hidden.contiguous(), weight.to(hidden.dtype).contiguous(), targets
