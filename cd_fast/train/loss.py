"""The training loss: summed next-token cross entropy straight from the final hidden states,
the [T, V] logits never whole. Two backends, picked by TrainConfig.loss_backend:

cd_fast  `cd_fast.kernels.linear_cross_entropy`: chunks sized from a memory budget, fp32-output
         GEMMs, the row reduction in Triton on CUDA (torch elsewhere); no host sync.
liger    Liger-Kernel's fused linear cross entropy (CUDA only), kept so the benchmark compares
         the two on the same steps.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from cd_fast.kernels import IGNORE_INDEX, linear_cross_entropy
from cd_fast.train.config import LOSS_BACKENDS


@functools.cache
def _liger_loss() -> Any:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        raise ImportError(
            "loss_backend='liger' needs liger-kernel: pip install liger-kernel, or use the "
            "default loss_backend='cd_fast'"
        ) from None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    backend: str = "cd_fast",
    max_chunk_bytes: int = 1 << 30,
) -> torch.Tensor:
    """Sum over tokens of -log softmax(hidden @ weight^T)[target], a float32 scalar.

    hidden [T, H], weight [V, H] (the LM head), targets [T] int64 with -100 = ignore.
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but targets has {targets.shape[0]}")
    if backend == "liger":
        return _liger_loss()(weight, hidden, targets).float()
    if backend != "cd_fast":
        raise ValueError(f"loss backend must be one of {LOSS_BACKENDS}, got {backend!r}")
    return linear_cross_entropy(hidden, weight, targets, max_chunk_bytes)
