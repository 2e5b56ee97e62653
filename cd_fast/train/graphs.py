"""`--cuda-graphs`: the whole optimizer step as one CUDA graph.

Every micro-batch's forward and backward, the gradient clipping, the NaN-skip decision, fused
AdamW (capturable, its learning rate a device tensor the scheduler fills) and the copy of the
fp32 masters back into the bf16 weights are captured once, after `WARMUP_STEPS` eager steps
(which compile, autotune and create the optimizer state on a side stream, as torch's CUDA-graph
notes ask), then replayed: per step the host packs the micro-batches, copies them into the
graph's static input buffers, fills each micro-batch's loss weight and launches one graph.
Static shapes make every step's buffers the same size; the step reads nothing back.

One process only (DDP's and FSDP2's collectives are not captured here), cd_fast's loss (Liger's
reads a value back), torch's fused AdamW, no gradient checkpointing (its recomputation saves and
restores the RNG state on the host).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from cd_fast.kernels import PackedBatch

WARMUP_STEPS = 3
_TENSORS = [f.name for f in fields(PackedBatch) if f.type in ("torch.Tensor", torch.Tensor)]


def check_cuda_graphs(config: Any, device: torch.device, world_size: int) -> None:
    """Refuse, in one line, a run whose step cannot be captured."""
    problems = [
        (device.type != "cuda", f"a CUDA device (this run is on {device})"),
        (world_size > 1, "one process (DDP/FSDP2 collectives are not captured)"),
        (config.loss_backend != "cd_fast", "loss_backend='cd_fast' (Liger's loss syncs)"),
        (config.optim != "adamw", "optim='adamw' (fused, capturable)"),
        (not config.static_shapes, "static_shapes"),
        (config.gradient_checkpointing, "no gradient_checkpointing (its RNG handling)"),
    ]
    missing = [need for bad, need in problems if bad]
    if missing:
        raise ValueError("cuda_graphs needs " + ", ".join(missing))


class GraphedStep:
    """Runs optimizer steps through one captured CUDA graph (see the module docstring).

    `run_step(batches, weights)` takes the step's packed micro-batches (static shapes, always
    the same count) and their loss weights, and returns (loss sum, grad norm, skipped) as
    device tensors owned by the caller."""

    def __init__(self, loss_module: Any, optim: Any, skip_non_finite: bool, device: torch.device):
        self.loss_module, self.optim, self.skip_non_finite = loss_module, optim, skip_non_finite
        self.device = device
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batches: list[PackedBatch] | None = None
        self.weights: torch.Tensor | None = None
        self.outputs: tuple[torch.Tensor, ...] | None = None

    def body(self, batches: list[PackedBatch], weights: torch.Tensor) -> tuple:
        """The captured step: every micro-batch (its loss weight a device scalar, 0 for an idle
        one), then clipping, the skip decision, AdamW and zeroed gradients."""
        loss_sum = torch.zeros((), device=self.device)
        for batch, weight in zip(batches, weights, strict=True):
            loss = self.loss_module(batch)
            (loss * weight).backward()
            loss_sum += loss.detach() * (weight != 0)
        grad_norm, skipped = self.optim.finish(loss_sum, self.skip_non_finite)
        return loss_sum, grad_norm, skipped

    def _fill(self, batches: list[PackedBatch], weights: list[float]) -> None:
        if self.batches is None:
            self.batches = batches
            self.weights = torch.zeros(len(weights), device=self.device)
        else:
            for static, batch in zip(self.batches, batches, strict=True):
                for name in _TENSORS:
                    getattr(static, name).copy_(getattr(batch, name), non_blocking=True)
        for i, weight in enumerate(weights):
            self.weights[i].fill_(weight)  # a scalar kernel argument: no host-to-device copy

    def run_step(self, batches: list[PackedBatch], weights: list[float]) -> tuple:
        self._fill(batches, weights)
        self.steps += 1
        if self.steps <= WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self.body(self.batches, self.weights)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return _owned(out)
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.body(self.batches, self.weights)
        self.graph.replay()
        return _owned(self.outputs)


def _owned(outputs: tuple) -> tuple:
    """Copies the caller keeps (the graph's outputs are overwritten by the next replay)."""
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in outputs)
