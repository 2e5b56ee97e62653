"""Summed next-token cross entropy straight from hidden states: the [T, V] logits never exist
whole. The training loss of cd_fast (the default on CUDA; Liger's is the alternative).

Per chunk of C tokens, with z = h W^T (fp32 output of a GEMM in the inputs' dtype) and
p = softmax(z):

    loss  = sum_t (logsumexp(z_t) - z_t[y_t])
    dL/dz = p - onehot(y)       (0 on ignored rows)
    dL/dh = (dL/dz) W,   dL/dW = (dL/dz)^T h

`lm_head.reduce_rows` writes the loss terms and dL/dz in one Triton program per row (dL/dz in
the inputs' dtype, so both gradient GEMMs run in bf16 with fp32 accumulation). Both gradients
are formed during the forward, chunk by chunk, so at most one chunk of fp32 logits and its
gradient are alive; backward only scales them by the incoming gradient. The chunk is as many
rows as fit `max_chunk_bytes` (default 1 GiB: 1,178 rows of a 151,936-token vocabulary in
bf16), not a fixed count: few large GEMMs keep the tensor cores busy. Nothing reads a value back
to the host: the caller divides by the label count it already knows.
"""

from __future__ import annotations

import torch

from cd_fast.kernels import outputs
from cd_fast.kernels.lm_head import check_lm_head, chunk_rows, logits_fp32, reduce_rows

DEFAULT_MAX_CHUNK_BYTES = 1 << 30


def linear_cross_entropy_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(loss sum fp32 [], dL/dhidden [T, H] or None, dL/dweight [V, H] or None), in chunks;
    inputs as `check_lm_head` returns them."""
    tokens, vocab = hidden.shape[0], weight.shape[0]
    need_grad = need_hidden_grad or need_weight_grad
    separate_grad = need_grad and hidden.dtype != torch.float32  # fp32: dL/dz overwrites z
    per_row = 4 * vocab + (hidden.element_size() * vocab if separate_grad else 0)
    chunk = chunk_rows(tokens, per_row, max_chunk_bytes)
    nll = outputs.empty((tokens,), torch.float32, hidden.device)
    grad_hidden = None
    if need_hidden_grad:
        grad_hidden = outputs.empty(tuple(hidden.shape), hidden.dtype, hidden.device)
    grad_weight = torch.zeros_like(weight) if need_weight_grad else None
    for start in range(0, tokens, chunk):
        end = min(start + chunk, tokens)
        h = hidden[start:end]
        logits = logits_fp32(h, weight)  # [C, V] fp32
        grad = None
        if need_grad:
            grad = logits
            if separate_grad:
                grad = outputs.empty((end - start, vocab), hidden.dtype, hidden.device)
        reduce_rows(logits, targets[start:end], nll[start:end], grad=grad)
        del logits
        if grad_hidden is not None:
            torch.mm(grad, weight, out=grad_hidden[start:end])
        if grad_weight is not None:
            grad_weight.addmm_(grad.t(), h)
        del grad
    return nll.sum(), grad_hidden, grad_weight


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, max_chunk_bytes: int):  # type: ignore[override]
        weight_dtype = weight.dtype
        hidden, weight, targets = check_lm_head("linear_cross_entropy", hidden, weight, targets)
        loss, grad_hidden, grad_weight = linear_cross_entropy_fwd(
            hidden,
            weight,
            targets,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            max_chunk_bytes,
        )
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight_dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output.to(grad_weight.dtype)).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """Sum over tokens of -log softmax(hidden @ weight^T)[target]: a float32 scalar on the
    device, differentiable in hidden and weight.

    Args:
        hidden: [T, H] final hidden states (bf16, fp16 or fp32).
        weight: [V, H] LM-head weight (tied embeddings too; computed in hidden's dtype, its
            gradient returned in its own).
        targets: [T] int64 next-token ids; -100 ignores a position (no loss, zero gradient).
        max_chunk_bytes: bound on one chunk's fp32 logits plus their gradient.
    """
    if max_chunk_bytes <= 0:
        raise ValueError(
            f"linear_cross_entropy: max_chunk_bytes must be > 0, got {max_chunk_bytes}"
        )
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, max_chunk_bytes)
    # no backward to come (an autograd Function would still form both gradients)
    checked = check_lm_head("linear_cross_entropy", hidden, weight, targets)
    return linear_cross_entropy_fwd(*checked, False, False, max_chunk_bytes)[0]
