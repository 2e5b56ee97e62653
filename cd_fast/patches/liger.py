"""Liger-Kernel's RMSNorm and SwiGLU Triton kernels on one model instance (CUDA training; the
fused loss is `cd_fast.train.loss`)."""

from __future__ import annotations

import logging
import sys

from torch import nn

logger = logging.getLogger(__name__)


def apply_liger(lm: nn.Module, explicit: bool) -> bool:
    """Liger RMSNorm/SwiGLU kernels on this causal LM's modules; False when liger-kernel is
    missing (an ImportError when `explicit`, a warning otherwise).

    Liger's patch functions also replace the modeling module's RMSNorm and MLP classes and its
    RoPE function for the whole process, so every model of that architecture built later would
    run Liger's Triton kernels, on the CPU too (where they fail). Those module-level changes are
    undone; the instance keeps its patched modules. Liger's RoPE exists only as such a
    process-wide patch, so it is not used.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        if explicit:
            raise ImportError("liger=True but liger-kernel is not installed") from None
        logger.warning("liger-kernel is not installed: RMSNorm/SwiGLU run unfused")
        return False
    modeling = sys.modules[type(lm).__module__]
    before = dict(vars(modeling))
    _apply_liger_kernel_to_instance(
        model=lm,
        rope=False,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    for name, value in list(vars(modeling).items()):
        if name not in before:
            delattr(modeling, name)
        elif before[name] is not value:
            setattr(modeling, name, before[name])
    return True
