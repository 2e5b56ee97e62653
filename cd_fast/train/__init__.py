"""Training: packed step planning and the SFT Trainer built on it.

    config.py       TrainConfig: every flag of `cdfast train`
    packing.py      the step planner (token budgets, no padding) and micro-batch splitting
    data.py         records -> tokenised samples (chat prompt, target, EOS; cuts counted)
    model.py        the trained model (packable, Liger, LoRA/QLoRA, checkpointing), its loss module
    loss.py         the fused LM-head loss (Liger on CUDA, chunked torch elsewhere)
    optim.py        AdamW, fp32 master weights, clipping, the schedule
    metrics.py      logging windows (the loop's one sync), FLOPs/MFU, metrics.jsonl
    checkpoint.py   checkpoints (`Checkpointer`) and the output folder's run protocol (`TrainRun`)
    export.py       the final model (merged or adapter; QLoRA and FSDP2 merges)
    distributed.py  DDP and FSDP2 under torchrun
    memory.py       the memory plan behind --max-memory
    trainer.py      the Trainer: setup, then the loop

The Trainer (and its torch/transformers/peft imports) loads on first use, so `cdfast --help`
and the packing helpers stay light.
"""

from typing import Any

from cd_fast.train.config import TrainConfig
from cd_fast.train.packing import Piece, StepPlanner, plan_steps, split_step

_LAZY = {
    "Trainer": "cd_fast.train.trainer",
    "TrainResult": "cd_fast.train.trainer",
    "StepTiming": "cd_fast.train.metrics",
    "NonFiniteLossError": "cd_fast.train.metrics",
    "TrainSet": "cd_fast.train.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cd_fast.train' has no attribute {name!r}")


__all__ = [
    "NonFiniteLossError",
    "Piece",
    "StepPlanner",
    "StepTiming",
    "TrainConfig",
    "TrainResult",
    "TrainSet",
    "Trainer",
    "plan_steps",
    "split_step",
]
