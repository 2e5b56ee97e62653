"""What makes a transformers causal LM run on packed rows (many sequences in one row, no
padding), in one call: `make_packable(model)`, which model loading, training and scoring use.

    attention.py         the varlen attention backends (FlashAttention-4, flash-attn, torch
                         varlen, padded SDPA groups), registered with transformers
    linear_attention.py  hybrid models (Qwen3.5, Qwen3-Next): their causal conv and gated delta
                         rule kept apart per sequence, or the model refused
    liger.py             Liger's RMSNorm/SwiGLU kernels on one model instance (CUDA training)

Each backend is chosen by `cd_fast.runtime.pick_backend` (fastest available; an environment
variable forces one), logged once.
"""

from __future__ import annotations

from torch import nn

from cd_fast.patches.attention import ATTN_IMPLEMENTATION, register
from cd_fast.patches.liger import apply_liger
from cd_fast.patches.linear_attention import UnpackableModelError, enable_packing

__all__ = [
    "ATTN_IMPLEMENTATION",
    "UnpackableModelError",
    "apply_liger",
    "causal_lm",
    "make_packable",
    "register",
]


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def make_packable(model: nn.Module, liger: bool | None = False) -> str | None:
    """Route `model`'s attention through cd_fast's varlen attention and make its other token
    mixers exact on packed rows (or raise UnpackableModelError); with `liger`, swap in Liger's
    RMSNorm/SwiGLU kernels (True: required, None: when installed). Safe to call again.
    Returns the hybrid family's name ("Qwen3.5", ...) or None for attention-only models."""
    lm = causal_lm(model)
    lm.config._attn_implementation = register()
    family = enable_packing(lm)
    if liger is not False and not getattr(lm, "_cd_fast_liger", False):
        lm._cd_fast_liger = apply_liger(lm, explicit=liger is True)
    return family
