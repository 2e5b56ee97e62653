"""The optimizer side of a run: AdamW over the trained weights (over their fp32 masters when the
model computes in bf16), gradient clipping and the learning-rate schedule."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cd_fast.runtime import warn_once
from cd_fast.train import distributed
from cd_fast.train.config import TrainConfig

logger = logging.getLogger(__name__)


class MasterWeights:
    """fp32 copies of bf16 trainable weights: the optimizer updates the copies, the model gets
    them rounded back to bf16 after each step (gradients accumulate in bf16)."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in params]

    def grads_to_masters(self) -> None:
        for master, param in zip(self.masters, self.params, strict=True):
            master.grad = None if param.grad is None else param.grad.float()

    def masters_to_params(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)


class Optimization:
    """One optimizer step's parts after the backward passes: `finish()` (`clip()`, the skip
    decision, `update()`, `zero_grad()`), then `next_lr()`."""

    def __init__(
        self,
        model: nn.Module,
        trained: list[nn.Parameter],
        config: TrainConfig,
        total_steps: int,
        device_lr: bool = False,
    ):
        self.model = model
        self.config = config
        self.masters = None
        params = trained
        if config.bf16 and config.master_weights and any(p.dtype == torch.bfloat16 for p in params):
            self.masters = MasterWeights(params)
            params = self.masters.masters
        self.optimized = params
        self.optimizer = _adamw(params, config, device_lr)
        self.scheduler = _schedule(self.optimizer, config, total_steps)

    def finish(
        self, loss_sum: torch.Tensor, skip_non_finite: bool, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """After the step's backward passes: clip, decide the NaN skip on the device (the same
        on every rank), update, zero the gradients. Returns (grad norm, skipped or None)."""
        grad_norm = self.clip()
        skipped = None
        if skip_non_finite:
            bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))
            skipped = distributed.any_rank(bad, world_size)
        self.update(skipped)
        self.zero_grad()
        return grad_norm, skipped

    def clip(self) -> torch.Tensor:
        """Gradients to the fp32 masters, then clip; returns the global norm."""
        if self.masters:
            self.masters.grads_to_masters()
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.optimized, max_norm, foreach=True)
        return distributed.full_norm(grad_norm)

    def update(self, skip: torch.Tensor | None = None) -> None:
        """The optimizer step. `skip` (a device bool) true leaves the weights and the optimizer
        state exactly as they were, decided on the device: fused AdamW reads it as its
        `found_inf`; bitsandbytes' 8-bit AdamW cannot, and reads it on the host (a sync)."""
        if skip is not None:
            if getattr(self.optimizer, "defaults", {}).get("fused"):
                self.optimizer.found_inf = skip.float()
            else:
                warn_once(logger, "adamw_8bit skips non-finite steps with a host sync per step")
                if bool(skip):
                    return
        self.optimizer.step()
        if self.masters:
            self.masters.masters_to_params()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.masters:
            self.model.zero_grad(set_to_none=True)

    def next_lr(self) -> float:
        """Advance the schedule (a device learning rate is filled in place, no sync); returns
        the learning rate the step just taken used, computed on the host."""
        lr = self.scheduler.get_last_lr()[0]
        if isinstance(lr, torch.Tensor):  # transformers' schedules are LambdaLR
            lr = self.config.learning_rate * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.step()
        return lr


def _adamw(
    params: list[torch.Tensor], config: TrainConfig, device_lr: bool = False
) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (not norms, biases); bitsandbytes' 8-bit on request.
    `device_lr` (static shapes, CUDA graphs): the learning rate is a tensor on the weights'
    device, filled in place by the schedule, and on CUDA the optimizer is capturable (its step
    count stays on the device too): a step the same every time, ready for capture."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    options = {
        "lr": config.learning_rate,
        "betas": (config.adam_beta1, config.adam_beta2),
        "eps": config.adam_epsilon,
    }
    if config.optim == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **options)
    if device_lr:
        device = params[0].device
        options["lr"] = torch.tensor(config.learning_rate, device=device)
        options["capturable"] = device.type == "cuda"
    return torch.optim.AdamW(groups, fused=True, **options)


@contextlib.contextmanager
def lr_kind_kept(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Around loading an optimizer state: each group's learning rate stays what this run made
    it (a device tensor, filled with the saved value, or a float), whatever the saved run had;
    `load_state_dict` alone would put the saved value, a CPU tensor or a float, in its place."""
    kept = [group["lr"] for group in optimizer.param_groups]
    yield
    for group, lr in zip(optimizer.param_groups, kept, strict=True):
        loaded = float(group["lr"])  # once per resume: a sync is fine here
        if isinstance(lr, torch.Tensor):
            lr.fill_(loaded)
            group["lr"] = lr
        else:
            group["lr"] = loaded


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    min_lr = config.lr_scheduler_type == "cosine_with_min_lr"
    return get_scheduler(
        config.lr_scheduler_type,
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs={"min_lr_rate": 0.1} if min_lr else {},
    )
