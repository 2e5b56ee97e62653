"""Summed next-token cross entropy straight from hidden states: the [T, V] logits never exist.

CUDA: Liger's fused linear cross entropy. Elsewhere: a chunked torch version of the same
algorithm. Per chunk of C tokens, with z = h W^T (fp32) and p = softmax(z):

    loss  = sum_t (logsumexp(z_t) - z_t[y_t])
    dL/dz = p - onehot(y)       (0 on ignored rows)
    dL/dh = (dL/dz) W,   dL/dW = (dL/dz)^T h

Both gradients are formed during the forward, chunk by chunk, so at most [C, V] floats are alive;
backward only scales them by the incoming gradient.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from cd_fast.kernels import IGNORE_INDEX
from cd_fast.runtime import warn_once

logger = logging.getLogger(__name__)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int):  # type: ignore[override]
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        weight32 = weight.float()
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight32) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].float()  # [C, H]
            y = targets[start : start + chunk_size]  # [C]
            valid = y != IGNORE_INDEX
            safe = torch.where(valid, y, 0)
            logits = h @ weight32.T  # [C, V]
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, safe[:, None])[:, 0]
            total += torch.where(valid, lse - target_logit, 0.0).sum()
            if need_hidden or need_weight:
                grad_logits = torch.softmax(logits, dim=-1)  # p, in place of the logits' memory
                grad_logits[torch.arange(y.numel(), device=y.device), safe] -= 1.0
                grad_logits *= valid[:, None]
                if need_hidden:
                    grad_hidden[start : start + chunk_size] = (grad_logits @ weight32).to(
                        hidden.dtype
                    )
                if need_weight:
                    grad_weight.addmm_(grad_logits.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


@functools.cache
def _liger_loss() -> Any:
    """Liger's fused linear cross entropy (summed), or None when liger-kernel is missing."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    use_liger: bool | None = None,
) -> torch.Tensor:
    """Sum over tokens of -log softmax(hidden @ weight^T)[target], a float32 scalar.

    hidden [T, H], weight [V, H] (the LM head), targets [T] int64 with -100 = ignore.
    use_liger: None = Liger on CUDA when installed (the chunked torch path otherwise, logged).
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]}")
    on_cuda = hidden.device.type == "cuda"
    if use_liger is None:
        use_liger = on_cuda
    if use_liger:
        liger = _liger_loss()
        if liger is not None:
            return liger(weight, hidden, targets).float()
        warn_once(logger, "liger-kernel is not installed: using the chunked torch loss")
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
