"""The SFT loop: packed token-budget steps, fused loss, label-token-weighted accumulation,
exact resume, SIGTERM checkpoints, metrics, DDP or FSDP2 under torchrun (train/distributed.py).

A step's contents depend only on (data, max_tokens_per_step, seed): the planner packs the step,
then `split_step` deals it into gradient_accumulation_steps x world_size micro-batches. Every
micro-batch's summed loss is divided by the step's label tokens over all of them (known on the
host), so the gradient is the same however the step is split, on one process or several.

The Trainer holds the setup and the loop; checkpoints and the output folder's run protocol are
`train/checkpoint.py`, the final model `train/export.py`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cd_fast.data import ReadConfig
from cd_fast.kernels import TokenStore, label_token_count
from cd_fast.models import load_model_config
from cd_fast.runs import job_manifest
from cd_fast.runtime import StopSignals, choose_device, progress_bar, rank_info
from cd_fast.train import distributed
from cd_fast.train.checkpoint import Checkpointer, TrainingState, TrainRun, seed_everything
from cd_fast.train.config import TrainConfig
from cd_fast.train.data import TrainSet, tokenize_traces
from cd_fast.train.export import export_final
from cd_fast.train.graphs import GraphedStep, check_cuda_graphs
from cd_fast.train.memory import ModelShape, fit_memory
from cd_fast.train.metrics import (
    LoggingWindow,
    MetricsWriter,
    StepTiming,
    batch_flops,
    peak_flops,
)
from cd_fast.train.model import CausalLMLoss, decoder_layers, prepare_model
from cd_fast.train.optim import Optimization
from cd_fast.train.packing import Piece, StepPlanner, split_step, static_shape

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    total_steps: int
    losses: dict[int, float] = field(default_factory=dict)
    """Loss of every step this process ran, by step number (read at logging steps)."""
    timings: list[StepTiming] = field(default_factory=list)
    """Wall time per logging window, checkpoints excluded (CUDA synced at each window's end)."""
    label_tokens: int = 0
    train_seconds: float = 0.0
    skipped_steps: list[int] = field(default_factory=list)
    stopped_by: int | None = None
    """The signal (SIGTERM, SIGINT) that stopped the run after a checkpoint; None: it ran out."""
    export_path: Path | None = None

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None

    @property
    def tokens_per_s(self) -> float:
        return self.label_tokens / self.train_seconds if self.train_seconds else 0.0


class Trainer:
    """Packed-sequence SFT of a causal LM on trace records.

    Args:
        model: HF hub id, local folder, .gguf file, or a loaded transformers causal LM.
        data: a trace file (read with `read`), a TraceReader, Trace objects / dicts, a
            `datasets.Dataset`, or an already tokenised TrainSet.
        config: TrainConfig (or keyword arguments for one).
        tokenizer: needed with a loaded model; else loaded with the model.
        progress: show a progress bar (rank 0).
        read: how to read a trace file (layout, fields, prompts, --limit...), recorded in the
            run's manifest as `cdfast train` records it.
    """

    def __init__(
        self,
        model: nn.Module | str | Path,
        data: Any,
        config: TrainConfig | None = None,
        tokenizer: Any = None,
        progress: bool = True,
        read: ReadConfig | None = None,
        **options: Any,
    ):
        self.config = config or TrainConfig(**options)
        self.read = read or ReadConfig()
        self.output_dir = Path(self.config.output_dir)
        self.progress = progress
        self.model_spec = str(model) if isinstance(model, (str, Path)) else None
        self._inputs: tuple[Any, Any, Any] | None = (model, data, tokenizer)

    def setup(self) -> Trainer:
        """Build the run's parts, in this order (`train()` calls it when needed): the process
        group and device, the memory plan, the output folder's checks (before any model loads),
        the model, the data, the optimizer. Returns self."""
        if self._inputs is None:
            return self
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"{self.output_dir} is a file: train writes a folder; choose another")
        model, data, tokenizer = self._inputs
        self._setup_distributed()
        self.shape = _model_shape(model)
        self._plan_memory()
        if self.config.cuda_graphs:
            check_cuda_graphs(self.config, self.device, self.world_size)
        self.run = TrainRun(
            self.output_dir,
            self._run_manifest(data),
            self.config.resume,
            self.config.overwrite_output_dir,
        )
        self.run.check()
        self._setup_model(model, tokenizer)
        self._setup_data(data)
        self._setup_optimizer()
        self._inputs = None
        return self

    def _setup_distributed(self) -> None:
        """Join torchrun's process group (when launched by it) and take this rank's device."""
        ranks = rank_info()
        if ranks.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world_size = ranks.rank, ranks.world_size
        self.strategy = distributed.resolve_strategy(self.config, self.world_size)
        if self.strategy is not None:
            self._log_rank0("%d ranks share each step: %s", self.world_size, self.strategy)
        self.device = choose_device(self.config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = self.progress and self.rank == 0
        if self.config.bf16 is None:
            self.config = replace(self.config, bf16=self.device.type == "cuda")
        if self.config.static_shapes is None:
            self.config = replace(self.config, static_shapes=self.device.type == "cuda")
        if self.config.optim == "adamw_8bit" and self.device.type != "cuda":
            raise ValueError("optim='adamw_8bit' (bitsandbytes) needs a CUDA device")
        if self.config.loss_backend == "liger" and self.device.type != "cuda":
            raise ValueError("loss_backend='liger' (Triton) needs a CUDA device")

    def _plan_memory(self) -> None:
        """max_memory: pick checkpointing and micro-batches that fit (from the model's shape)."""
        config = self.config
        self.memory = None
        if config.max_memory is None:
            return
        self.memory = fit_memory(
            self.shape,
            config,
            config.max_memory,
            self.device.type == "cuda",
            self.world_size,
            sharded=self.strategy == "fsdp",
        )
        self.config = replace(
            config,
            gradient_checkpointing=self.memory.gradient_checkpointing,
            gradient_accumulation_steps=self.memory.gradient_accumulation_steps,
        )
        self._log_rank0("max_memory=%s GiB: planned %s", config.max_memory, self.memory.describe())

    def _setup_model(self, model: nn.Module | str | Path, tokenizer: Any) -> None:
        """Load the model and make it trainable (and wrapped for DDP or sharded for FSDP2)."""
        config = self.config
        seed_everything(config.seed)
        sharded = self.strategy == "fsdp"
        self.model, self.tokenizer = prepare_model(
            model,
            config,
            self.device,
            tokenizer,
            dtype=distributed.load_dtype(config, self.strategy),
            load_device=torch.device("cpu") if sharded else None,  # fully_shard moves the shards
        )
        on_cuda = self.device.type == "cuda"
        self.loss_module = CausalLMLoss(
            self.model, config.loss_backend, config.loss_chunk_mib << 20
        )
        self.ddp = None
        if self.strategy == "ddp":
            self.ddp = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if on_cuda else None
            )
        elif sharded:
            distributed.shard(self.loss_module, decoder_layers(self.model), self.device, config)

    def _setup_data(self, data: Any) -> None:
        """Tokenise the records, upload them, and plan the token-budget steps."""
        config = self.config
        if isinstance(data, TrainSet):
            self.train_set = data
        elif self.tokenizer is None:
            raise ValueError("pass the tokenizer along with an already loaded model")
        else:
            records = self.read.records(self.read.open(data))
            self.train_set = tokenize_traces(
                records,
                self.tokenizer,
                config.target_template,
                min(config.max_seq_length, config.max_tokens_per_step),
            )
        self.store = TokenStore(
            self.train_set.sequences, self.train_set.prompt_lengths, device=self.device
        )
        self.planner = StepPlanner(
            self.store.lengths, config.max_tokens_per_step, seed=config.seed, overlong="truncate"
        )
        steps_per_epoch = len(self.planner.epoch_plan(0))
        if config.max_steps > 0:
            self.total_steps = config.max_steps
        else:
            self.total_steps = max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
        self.static_shape = None
        if config.static_shapes:
            parts = config.gradient_accumulation_steps * self.world_size
            self.static_shape = static_shape(self.planner, parts, self.total_steps)
            self._log_rank0("static shapes: every micro-batch padded to %s", self.static_shape)

    def _setup_optimizer(self) -> None:
        """AdamW over the trainable weights (their fp32 masters with bf16), the LR schedule,
        the checkpointer and the metrics."""
        self.named_trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        trained = [p for _, p in self.named_trainable]
        self.optim = Optimization(
            self.model, trained, self.config, self.total_steps, device_lr=self.config.static_shapes
        )
        self.optimizer, self.masters = self.optim.optimizer, self.optim.masters
        self.graphed = (
            GraphedStep(self._graph_body, self.device) if self.config.cuda_graphs else None
        )
        self.step = 0
        self.checkpointer = Checkpointer(
            self.output_dir,
            self.config.save_total_limit,
            self.rank,
            self.world_size,
            sharded=self.strategy == "fsdp",
        )
        self.metrics = MetricsWriter(self.output_dir, enabled=self.rank == 0)

    def _log_rank0(self, message: str, *args: Any) -> None:
        if self.rank == 0:
            logger.info(message, *args)

    def _run_manifest(self, data: Any) -> dict[str, Any]:
        """The run's identity for --resume: data files, reading options, model, every setting
        that changes the result (not where or how often it checkpoints and logs, nor the device
        or strategy)."""
        options = {**self.config.result_options(), "model": self.model_spec}
        return job_manifest("train", self.read, data, options, name="data")

    # ---- checkpoints ----

    @property
    def state(self) -> TrainingState:
        return TrainingState(
            module=self.loss_module,
            trained=self.named_trainable,
            masters=self.masters.masters if self.masters else None,
            optimizer=self.optimizer,
            scheduler=self.optim.scheduler,
            planner=self.planner,
        )

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint-STEP (collective under torchrun); returns its path on rank 0."""
        return self.checkpointer.save(self.state, self.step, self.total_steps)

    def load_checkpoint(self, path: Path) -> None:
        self.step = self.checkpointer.load(path, self.state, self.config.seed)
        self.metrics.truncate_after(self.step)
        self._log_rank0("resumed from %s at step %d", path, self.step)

    # ---- the run ----

    def train(self) -> TrainResult:
        """Run to total_steps (or until SIGTERM); returns the run's losses and throughput."""
        self.setup()
        with self.run if self.rank == 0 else nullcontext():
            return self._train()

    def _start(self) -> None:
        """Rank 0 starts the run in its folder (cleared with --overwrite-output-dir); every rank
        then loads the latest checkpoint, if any."""
        c = self.config
        if self.rank == 0:
            self.run.start()
        if self.world_size > 1:
            dist.barrier()
        checkpoints = [] if c.overwrite_output_dir else self.run.checkpoints
        if checkpoints:
            self.load_checkpoint(checkpoints[-1])
        else:
            if c.resume:
                self._log_rank0("resume: no checkpoint in %s, starting fresh", self.output_dir)
            self.metrics.reset()
        if self.rank == 0:
            self.run.record(
                {
                    **c.to_dict(),
                    "model": self.model_spec,
                    "read": self.read.result_options(),
                    "world_size": self.world_size,
                    "distributed": self.strategy,
                    "total_steps": self.total_steps,
                    "samples": len(self.train_set),
                    "truncated": len(self.train_set.truncated),
                    "dropped": len(self.train_set.dropped),
                }
            )

    def _train(self) -> TrainResult:
        self._start()
        result = TrainResult(self.output_dir, self.step, self.total_steps)
        try:
            with StopSignals(announce=self.rank == 0) as self.stop:
                self._loop(result)
        finally:
            self.metrics.close()
        if not result.interrupted:
            result.export_path = self.export()
        if self.world_size > 1:
            dist.barrier()
        return result

    def export(self) -> Path | None:
        """Write output_dir/final (see train/export.py); every rank calls it."""
        sharded = self.strategy == "fsdp"
        return export_final(
            self.output_dir,
            self.model,
            self.tokenizer,
            self.config,
            self.model_spec,
            sharded,
            self.rank,
        )

    # ---- the loop ----

    def _loop(self, result: TrainResult) -> None:
        c = self.config
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = progress_bar(
            "train", self.total_steps, unit="step", initial=self.step, disable=not self.progress
        )
        started = time.perf_counter()
        window = LoggingWindow(self.step + 1, started)
        steps = iter(self.planner)
        try:
            while self.step < self.total_steps:
                self._train_step(next(steps), window, result)
                bar.update(1)
                last = self.step == self.total_steps
                log = self.step % c.logging_steps == 0 or last
                stop = distributed.agreed_stop(
                    self.stop.received, self.world_size, log, self.device
                )
                save = bool(stop) or (c.save_steps > 0 and (self.step % c.save_steps == 0 or last))
                if log or save:
                    row = self._close_window(window, result)
                    if row is not None:
                        loss, speed = f"{row['loss']:.4f}", f"{row['tokens_per_s']:.0f}"
                        bar.set_postfix(loss=loss, tok_s=speed, refresh=False)  # at its pace
                    window = LoggingWindow(self.step + 1, time.perf_counter())
                if save:
                    self.save_checkpoint()
                    window.start = time.perf_counter()  # checkpoint time is not training time
                    if stop and not last:
                        result.stopped_by = stop
                        break
        finally:
            bar.close()
        result.step = self.step
        result.train_seconds = time.perf_counter() - started

    def _train_step(self, pieces: list[Piece], window: LoggingWindow, result: TrainResult) -> None:
        """One optimizer step over `pieces` (this rank's micro-batches of it), accounted in
        `window`; a non-finite step is skipped under nan_policy="skip", decided on the device
        (no host sync: the window reports it when it closes)."""
        c = self.config
        micro = split_step(pieces, c.gradient_accumulation_steps * self.world_size)
        first = self.rank * c.gradient_accumulation_steps
        mine = micro[first : first + c.gradient_accumulation_steps]
        labels = self._label_tokens(pieces)
        scale = self.world_size / max(labels, 1)
        if self.graphed is not None:  # one process: every part, an empty one as an idle batch
            batches = [self._pack(part) if part else self._idle_batch() for part in mine]
            weights = [scale if part else 0.0 for part in mine]
            loss_sum, grad_norm, skipped = self.graphed.run_step(batches, weights)
        else:
            loss_sum = torch.zeros((), device=self.device)
            if self.world_size == 1:
                mine = [m for m in mine if m]
            for i, part in enumerate(mine):
                loss_sum += self._micro_step(part, scale, sync=i == len(mine) - 1)
            grad_norm, skipped = self.optim.finish(
                loss_sum, c.nan_policy == "skip", self.world_size
            )
        ids = [self.train_set.ids[p.index] for p in pieces]
        self.step += 1
        window.add(self.step, loss_sum, labels, ids, skipped)
        window.lr = self.optim.next_lr()
        window.grad_norm = grad_norm
        window.flops += batch_flops(self.shape, [p.length for p in pieces])
        window.label_tokens += labels

    def _close_window(self, window: LoggingWindow, result: TrainResult) -> dict[str, Any] | None:
        """Time the window and read its losses (the one place the loop syncs); write its
        metrics row and return it (None for a window of skipped steps only)."""
        timing, losses, skipped = window.close(self.step, self.device, self.world_size)
        for step, ids in skipped:
            result.skipped_steps.append(step)
            logger.warning(
                "step %d: non-finite loss or gradient, skipped (samples: %s)",
                step,
                ", ".join(ids[:20]),
            )
        result.timings.append(timing)
        result.label_tokens += timing.label_tokens
        result.losses.update(losses)
        if not losses:
            return None
        peak = peak_flops(self.device)
        row = window.row(timing, self.planner.epoch, peak, self.world_size)
        self.metrics.write(row)
        return row

    def _label_tokens(self, pieces: list[Piece]) -> int:
        prompts = [int(self.store.prompt_lengths[p.index]) - p.start for p in pieces]
        return label_token_count([p.length for p in pieces], prompts)

    def _micro_step(self, pieces: list[Piece], scale: float, sync: bool) -> torch.Tensor:
        module = self.ddp or self.loss_module
        if pieces:
            batch, weight = self._pack(pieces), scale
        else:  # an idle rank still joins the collectives (DDP, FSDP2), with a zero loss
            batch, weight = self._idle_batch(), 0.0
        context = self.ddp.no_sync() if (self.ddp is not None and not sync) else nullcontext()
        with context:
            loss = module(batch)
            (loss * weight).backward()
        return loss.detach() if pieces else torch.zeros((), device=self.device)

    def _idle_batch(self) -> Any:
        """Two tokens of the first sample, packed as any batch: a part with nothing to do."""
        idle = [min(2, int(self.store.lengths[0]))]
        return self.store.pack([0], [0], idle, shape=self.static_shape)

    def _pack(self, pieces: list[Piece]) -> Any:
        return self.store.pack(
            [p.index for p in pieces],
            [p.start for p in pieces],
            [p.stop for p in pieces],
            shape=self.static_shape,
        )


def _model_shape(model: nn.Module | str | Path) -> ModelShape:
    config = model.config if isinstance(model, nn.Module) else load_model_config(model)
    return ModelShape.from_config(config)
