"""Training: packed step planning and varlen attention (the trainer builds on these)."""

from cd_fast.train.attention import ATTN_IMPLEMENTATION, register, varlen_attention
from cd_fast.train.packing import Piece, StepPlanner, plan_steps

__all__ = [
    "ATTN_IMPLEMENTATION",
    "Piece",
    "StepPlanner",
    "plan_steps",
    "register",
    "varlen_attention",
]
