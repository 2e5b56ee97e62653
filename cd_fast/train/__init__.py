"""Training: packed step planning, varlen attention, and the SFT Trainer built on them.

The Trainer (and its torch/transformers/peft imports) loads on first use, so `cdfast --help`
and the packing helpers stay light.
"""

from typing import Any

from cd_fast.attention import ATTN_IMPLEMENTATION, register, varlen_attention
from cd_fast.train.config import TrainConfig
from cd_fast.train.packing import Piece, StepPlanner, plan_steps, split_step

_LAZY = {
    "Trainer": "cd_fast.train.trainer",
    "TrainResult": "cd_fast.train.trainer",
    "StepTiming": "cd_fast.train.trainer",
    "NonFiniteLossError": "cd_fast.train.trainer",
    "TrainSet": "cd_fast.train.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cd_fast.train' has no attribute {name!r}")


__all__ = [
    "ATTN_IMPLEMENTATION",
    "NonFiniteLossError",
    "Piece",
    "StepPlanner",
    "StepTiming",
    "TrainConfig",
    "TrainResult",
    "TrainSet",
    "Trainer",
    "plan_steps",
    "register",
    "split_step",
    "varlen_attention",
]
