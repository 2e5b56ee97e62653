"""Training metrics: FLOPs/MFU, peak memory, the logging window (the steps between two logging
points, timed and read together: the only place the loop syncs), and the metrics.jsonl /
TensorBoard writers.

MFU = achieved model FLOP/s / peak FLOP/s, with the model FLOPs of a packed batch of
sequences of lengths l_i (PaLM / nanoGPT accounting, forward + backward, no recompute):

    FLOPs = 6 * N * sum(l_i) + 12 * L * H * Q * sum(l_i ** 2)

i.e. 6N + 12·L·H·Q·Σl²/Σl per token, where N = weights every token is multiplied by (blocks +
LM head, no embedding lookup), L attention layers, H query heads, Q head dim. The attention term
counts the full l x l score matrix, as the papers do (causal kernels do about half of it). The
Gated-DeltaNet layers of a hybrid (Qwen3.5) count by their projections in N; their linear-time
chunked recurrence is left out (a lower bound on the work done).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cd_fast.train.memory import ModelShape

logger = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "B200": 2250e12}


def batch_flops(shape: ModelShape, lengths: list[int]) -> float:
    attention = 12 * shape.attention_layers * shape.heads * shape.head_dim
    squares = float(sum(n * n for n in lengths))
    return 6.0 * shape.matmul_params * sum(lengths) + attention * squares


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of the device, None when unknown (then no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated device memory (CUDA) or the process's peak resident set (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


class MetricsWriter:
    """Appends one JSON object per logging step to metrics.jsonl (and TensorBoard if installed)."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tensorboard = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: metrics go to %s only", self.path)
        else:
            self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"))

    def reset(self) -> None:
        """A run that starts from step 0: rows of an earlier start (killed before its first
        checkpoint) go, so no step is logged twice."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint (they will be logged again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"train/{key}", value, row["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class NonFiniteLossError(ValueError):
    """A step's loss was NaN or inf (nan_policy="stop")."""


@dataclass
class StepTiming:
    """The steps between two logging points, timed together (the loop syncs only there)."""

    first_step: int
    last_step: int
    label_tokens: int
    seconds: float
    flops: float  # model FLOPs of these steps (the MFU formula's numerator)
    peak_memory_gib: float

    @property
    def tokens_per_s(self) -> float:
        return self.label_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoggingWindow:
    """The steps since the last logging point: their losses, and under nan_policy="skip" whether
    each updated the weights, stay on the device until it closes."""

    first_step: int
    start: float  # perf_counter at its start (checkpoint time excluded)
    steps: list[tuple[int, torch.Tensor, int, list[str], torch.Tensor | None]] = field(
        default_factory=list
    )
    flops: float = 0.0
    label_tokens: int = 0
    grad_norm: torch.Tensor | None = None
    lr: float = 0.0
    loss_sums: list[float] = field(default_factory=list)  # the updated steps', read when it closes
    labels: int = 0  # the updated steps' label tokens

    def add(
        self,
        step: int,
        loss_sum: torch.Tensor,
        labels: int,
        ids: list[str],
        skipped: torch.Tensor | None = None,
    ) -> None:
        """A step: its summed loss (a device tensor), label count and samples; `skipped` (a
        device bool, nan_policy="skip") says whether the optimizer left the weights as they
        were."""
        self.steps.append((step, loss_sum, labels, ids, skipped))

    def close(
        self, step: int, device: torch.device, world_size: int
    ) -> tuple[StepTiming, dict[int, float], list[tuple[int, list[str]]]]:
        """Time the window (syncing CUDA) and read its losses, summed over the ranks, and which
        steps were skipped, in one transfer: (the timing, each updated step's mean loss, each
        skipped step with its samples). A non-finite loss of an updated step stops the run,
        naming the step and its samples."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        timing = StepTiming(
            first_step=self.first_step,
            last_step=step,
            label_tokens=self.label_tokens,
            seconds=time.perf_counter() - self.start,
            flops=self.flops,
            peak_memory_gib=round(peak_memory_gib(device), 3),
        )
        if not self.steps:
            return timing, {}, []
        sums = torch.stack([loss for _, loss, _, _, _ in self.steps])
        if world_size > 1:
            dist.all_reduce(sums)
        no = torch.zeros((), dtype=torch.bool, device=sums.device)
        skips = torch.stack([no if s is None else s for *_, s in self.steps])
        read = torch.stack([sums.double(), skips.double()]).cpu().tolist()
        losses, skipped = {}, []
        for (at, _, labels, ids, _), total, skip in zip(self.steps, *read, strict=True):
            if skip:
                skipped.append((at, ids))
                continue
            losses[at] = total / max(labels, 1)
            self.loss_sums.append(total)
            self.labels += labels
            if not math.isfinite(losses[at]):
                raise NonFiniteLossError(
                    f"step {at}: loss is {losses[at]} (samples: {', '.join(ids[:20])}); "
                    "lower the learning rate, check these records, or use nan_policy='skip'"
                )
        return timing, losses, skipped

    def row(self, timing: StepTiming, epoch: int, peak: float | None, ranks: int) -> dict:
        """The metrics.jsonl row of a closed window (its mean loss over its label tokens)."""
        row = {
            "step": timing.last_step,
            "epoch": epoch,
            "loss": sum(self.loss_sums) / max(self.labels, 1),
            "lr": self.lr,
            "grad_norm": float(self.grad_norm),
            "tokens_per_s": timing.tokens_per_s,
            "label_tokens": timing.label_tokens,
            "peak_memory_gib": timing.peak_memory_gib,
        }
        if peak and timing.seconds > 0:
            row["mfu"] = timing.flops / timing.seconds / (peak * ranks)
        return row
