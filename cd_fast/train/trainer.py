"""The SFT loop: packed token-budget steps, fused loss, label-token-weighted accumulation,
exact resume, SIGTERM checkpoints, metrics, DDP or FSDP2 under torchrun (train/distributed.py).

A step's contents depend only on (data, max_tokens_per_step, seed): the planner packs the step,
then `split_step` deals it into gradient_accumulation_steps x world_size micro-batches. Every
micro-batch's summed loss is divided by the step's label tokens over all of them (known on the
host), so the gradient is the same however the step is split, on one process or several.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cd_fast.data import AtomicWriter
from cd_fast.kernels import TokenStore, label_token_count
from cd_fast.models import load_model_config
from cd_fast.runs import RunLock, check_same_run, run_manifest
from cd_fast.runtime import choose_device, progress_bar, rank_info
from cd_fast.train import checkpoint as ckpt
from cd_fast.train import distributed
from cd_fast.train.config import TrainConfig
from cd_fast.train.data import TrainSet, as_traces, tokenize_traces
from cd_fast.train.memory import ModelShape, fit_memory
from cd_fast.train.metrics import MetricsWriter, batch_flops, peak_flops, peak_memory_gib
from cd_fast.train.model import CausalLMLoss, causal_lm, decoder_layers, load_model, prepare_model
from cd_fast.train.packing import Piece, StepPlanner, split_step

logger = logging.getLogger(__name__)

RUN_MANIFEST = "run.json"
# TrainConfig fields free to differ on --resume: where and how often the run saves and logs,
# and where it runs (FSDP2 checkpoints reshard; the steps and their data stay the same)
_RUN_ONLY_SETTINGS = (
    "output_dir",
    "resume",
    "overwrite_output_dir",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "device",
    "distributed",
    "fsdp_cpu_offload",
    "extra",
)


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
    interrupted: bool = False
    export_path: Path | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.label_tokens / self.train_seconds if self.train_seconds else 0.0


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _model_shape(model: nn.Module | str | Path) -> ModelShape:
    config = model.config if isinstance(model, nn.Module) else load_model_config(model)
    return ModelShape.from_config(config)


class Trainer:
    """Packed-sequence SFT of a causal LM on trace records.

    Args:
        model: HF hub id, local folder, .gguf file, or a loaded transformers causal LM.
        data: trace file path, TraceReader, Trace objects / dicts, a `datasets.Dataset`, or an
            already tokenised TrainSet.
        config: TrainConfig (or keyword arguments for one).
        tokenizer: needed with a loaded model; else loaded with the model.
        progress: show a progress bar (rank 0).
    """

    def __init__(
        self,
        model: nn.Module | str | Path,
        data: Any,
        config: TrainConfig | None = None,
        tokenizer: Any = None,
        progress: bool = True,
        **options: Any,
    ):
        self.config = config or TrainConfig(**options)
        self.output_dir = Path(self.config.output_dir)
        self.progress = progress
        self.model_spec = str(model) if isinstance(model, (str, Path)) else None
        self._inputs: tuple[Any, Any, Any] | None = (model, data, tokenizer)

    def setup(self) -> Trainer:
        """Build the run's parts, in this order (`train()` calls it when needed): the process
        group and device, the model, the data, the optimizer. Returns self."""
        if self._inputs is None:
            return self
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"{self.output_dir} is a file: train writes a folder; choose another")
        model, data, tokenizer = self._inputs
        self._setup_distributed()
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
        if self.config.optim == "adamw_8bit" and self.device.type != "cuda":
            raise ValueError("optim='adamw_8bit' (bitsandbytes) needs a CUDA device")

    def _setup_model(self, model: nn.Module | str | Path, tokenizer: Any) -> None:
        """Fit the memory plan (max_memory), then load the model and make it trainable."""
        config = self.config
        self.shape = _model_shape(model)
        self.memory = None
        if config.max_memory is not None:
            self.memory = fit_memory(
                self.shape,
                config,
                config.max_memory,
                self.device.type == "cuda",
                self.world_size,
                sharded=self.strategy == "fsdp",
            )
            self.config = config = replace(
                config,
                gradient_checkpointing=self.memory.gradient_checkpointing,
                gradient_accumulation_steps=self.memory.gradient_accumulation_steps,
            )
            self._log_rank0(
                "max_memory=%s GiB: planned %s", config.max_memory, self.memory.describe()
            )
        _seed_everything(config.seed)
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
        use_liger = config.liger if config.liger is not None else on_cuda
        self.loss_module = CausalLMLoss(self.model, use_liger and on_cuda, config.loss_chunk_size)
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
            self.train_set = tokenize_traces(
                as_traces(data), self.tokenizer, config.target_template, config.max_seq_length
            )
        if config.max_seq_length > config.max_tokens_per_step:
            logger.warning(
                "max_seq_length=%d exceeds max_tokens_per_step=%d: longer samples are cut to "
                "the step budget",
                config.max_seq_length,
                config.max_tokens_per_step,
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

    def _setup_optimizer(self) -> None:
        """AdamW over the trainable weights (their fp32 masters with bf16), the LR schedule."""
        config = self.config
        self.named_trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in self.named_trainable]
        self.masters = None
        if config.bf16 and config.master_weights and any(p.dtype == torch.bfloat16 for p in params):
            self.masters = MasterWeights(params)
            params = self.masters.masters
        self.optimized = params
        self.optimizer = self._make_optimizer(params)
        self.scheduler = self._make_scheduler()
        self.step = 0
        self.metrics = MetricsWriter(self.output_dir, enabled=self.rank == 0)
        self._stop_requested = False

    def _log_rank0(self, message: str, *args: Any) -> None:
        if self.rank == 0:
            logger.info(message, *args)

    def _make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        c = self.config
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": c.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        options = {
            "lr": c.learning_rate,
            "betas": (c.adam_beta1, c.adam_beta2),
            "eps": c.adam_epsilon,
        }
        if c.optim == "adamw_8bit":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, **options)
        return torch.optim.AdamW(groups, fused=True, **options)

    def _make_scheduler(self) -> Any:
        from transformers import get_scheduler

        min_lr = self.config.lr_scheduler_type == "cosine_with_min_lr"
        extra = {"min_lr_rate": 0.1} if min_lr else {}
        return get_scheduler(
            self.config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=math.ceil(self.config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
            scheduler_specific_kwargs=extra,
        )

    # ---- checkpoints ----

    def _trained_tensors(self) -> dict[str, torch.Tensor]:
        values = self.masters.masters if self.masters else [p for _, p in self.named_trainable]
        return {name: v for (name, _), v in zip(self.named_trainable, values, strict=True)}

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint-STEP (collective under torchrun); returns its path on rank 0."""
        rngs = [ckpt.rng_state()]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        state = {
            "planner": self.planner.state_dict(),
            "total_steps": self.total_steps,
            "world_size": self.world_size,
        }
        keep = self.config.save_total_limit
        path = None
        if self.strategy == "fsdp":
            if self.rank == 0:
                ckpt.start_checkpoint(self.output_dir, self.step)
            dist.barrier()
            folder = ckpt.staging_folder(self.output_dir, self.step) / ckpt.SHARDED_FOLDER
            distributed.save_sharded(folder, self.loss_module, self.optimizer)
            if self.rank == 0:
                scheduler = self.scheduler.state_dict()
                path = ckpt.finish_checkpoint(
                    self.output_dir, self.step, scheduler, state, rngs, keep
                )
        elif self.rank == 0:
            path = ckpt.write_checkpoint(
                self.output_dir,
                self.step,
                self._trained_tensors(),
                self.optimizer.state_dict(),
                self.scheduler.state_dict(),
                state,
                rngs,
                keep,
            )
        if self.world_size > 1:
            dist.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        saved = ckpt.read_checkpoint(path, self.rank, self.world_size)
        sharded = saved["tensors"] is None
        if sharded != (self.strategy == "fsdp"):
            how = "under torchrun with --distributed fsdp" if sharded else "alone or with ddp"
            raise ValueError(
                f"{path} was saved {'by FSDP2' if sharded else 'without FSDP2'}: resume it {how}"
            )
        if sharded:
            distributed.load_sharded(path / ckpt.SHARDED_FOLDER, self.loss_module, self.optimizer)
        else:
            self._load_tensors(path, saved["tensors"])
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.planner.load_state_dict(saved["state"]["planner"])
        self.step = int(saved["state"]["step"])
        if saved["rng"] is not None:
            ckpt.set_rng_state(saved["rng"])
        else:
            saved_world = saved["state"].get("world_size", 1)
            _seed_everything(self.config.seed + self.step)
            if self.rank == 0:
                logger.warning(
                    "%s was saved by %d ranks, resuming on %d: same data order and step "
                    "contents, but random streams (dropout) restart from the seed",
                    path,
                    saved_world,
                    self.world_size,
                )
        self.metrics.truncate_after(self.step)
        self._log_rank0("resumed from %s at step %d", path, self.step)

    def _load_tensors(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        missing = [n for n, _ in self.named_trainable if n not in tensors]
        if missing:
            raise ValueError(
                f"{path}: checkpoint lacks {len(missing)} trained tensors, e.g. {missing[0]}"
            )
        with torch.no_grad():
            for name, param in self.named_trainable:
                param.copy_(tensors[name])
            if self.masters:
                names = [name for name, _ in self.named_trainable]
                for name, master in zip(names, self.masters.masters, strict=True):
                    master.copy_(tensors[name])

    # ---- the loop ----

    def _label_tokens(self, pieces: list[Piece]) -> int:
        prompts = [int(self.store.prompt_lengths[p.index]) - p.start for p in pieces]
        return label_token_count([p.length for p in pieces], prompts)

    def _pack(self, pieces: list[Piece]) -> Any:
        return self.store.pack(
            [p.index for p in pieces], [p.start for p in pieces], [p.stop for p in pieces]
        )

    def _micro_step(self, pieces: list[Piece], scale: float, sync: bool) -> torch.Tensor:
        module = self.ddp or self.loss_module
        if pieces:
            batch, weight = self._pack(pieces), scale
        else:  # an idle rank still joins the collectives (DDP, FSDP2), with a zero loss
            batch, weight = self.store.pack([0], [0], [min(2, int(self.store.lengths[0]))]), 0.0
        context = self.ddp.no_sync() if (self.ddp is not None and not sync) else nullcontext()
        with context:
            loss = module(batch)
            (loss * weight).backward()
        return loss.detach() if pieces else torch.zeros((), device=self.device)

    def _clip_gradients(self) -> torch.Tensor:
        """Gradients to the fp32 masters, then clip; returns the global norm (on the device)."""
        if self.masters:
            self.masters.grads_to_masters()
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.optimized, max_norm, foreach=True)
        return distributed.full_norm(grad_norm)

    def _apply_update(self) -> None:
        self.optimizer.step()
        if self.masters:
            self.masters.masters_to_params()

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.masters:
            self.model.zero_grad(set_to_none=True)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True
        if self.rank == 0:
            print(f"\nsignal {signum}: checkpointing after this step", file=sys.stderr)

    def train(self) -> TrainResult:
        """Run to total_steps (or until SIGTERM); returns the run's losses and throughput."""
        self.setup()
        lock = RunLock(self.output_dir / ".lock", str(self.output_dir))
        with lock if self.rank == 0 else nullcontext():
            return self._train()

    def _run_manifest(self) -> dict[str, Any]:
        """The run's identity for --resume: data files, model, every setting that changes the
        result (not where or how often it checkpoints and logs, nor the device or strategy)."""
        extra = dict(self.config.extra)
        options = {k: v for k, v in self.config.to_dict().items() if k not in _RUN_ONLY_SETTINGS}
        options.update({k: v for k, v in extra.items() if k not in ("data", "prompts")})
        options["model"] = self.model_spec
        inputs = {k: extra.get(k) for k in ("data", "prompts") if k in extra}
        return run_manifest("train", inputs, options)

    def _prepare_output_dir(self) -> list[Path]:
        """Refuse what would mix two runs in output_dir; clear what a killed run left behind.
        Every rank checks (they see the same folder), rank 0 changes it. Returns the
        checkpoints to resume from."""
        c, out = self.config, self.output_dir
        checkpoints = ckpt.list_checkpoints(out)
        finished = (out / "final").exists()
        manifest = self._run_manifest()
        if c.overwrite_output_dir:
            if self.rank == 0:
                for path in [*checkpoints, out / "final", out / "final-adapter"]:
                    shutil.rmtree(path, ignore_errors=True)
            checkpoints = []
        elif finished and not c.resume:
            raise ValueError(
                f"{out} holds a finished model (final/): pass --overwrite-output-dir to train "
                "again from scratch, --resume to continue that run, or choose another output_dir"
            )
        elif checkpoints and not c.resume:
            raise ValueError(
                f"{out} already holds checkpoints: pass --resume to continue that run, "
                "--overwrite-output-dir to start over, or choose another output_dir"
            )
        saved = out / RUN_MANIFEST
        if checkpoints and saved.is_file():
            check_same_run(json.loads(saved.read_text()), manifest, saved)
        if self.rank == 0:
            for stale in ckpt.remove_stale_staging(out):
                logger.info("removed %s (a checkpoint a killed run did not finish)", stale.name)
            if not checkpoints:  # a run from step 0
                out.mkdir(parents=True, exist_ok=True)
                self.metrics.reset()
                with AtomicWriter(saved) as handle:
                    json.dump(manifest, handle, indent=1, default=str)
        if self.world_size > 1:
            dist.barrier()
        return checkpoints

    def _train(self) -> TrainResult:
        c = self.config
        checkpoints = self._prepare_output_dir()
        if checkpoints:
            self.load_checkpoint(checkpoints[-1])
        elif c.resume:
            self._log_rank0("resume: no checkpoint in %s, starting fresh", self.output_dir)
        if self.rank == 0:
            (self.output_dir / "train_config.json").write_text(
                json.dumps(
                    {
                        **c.to_dict(),
                        "model": self.model_spec,
                        "world_size": self.world_size,
                        "distributed": self.strategy,
                        "total_steps": self.total_steps,
                        "samples": len(self.train_set),
                        "truncated": len(self.train_set.truncated),
                        "dropped": len(self.train_set.dropped),
                    },
                    indent=1,
                    default=str,
                )
            )
        result = TrainResult(self.output_dir, self.step, self.total_steps)
        previous = None
        if _in_main_thread():
            previous = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            self._loop(result)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.metrics.close()
        if not result.interrupted:
            with ckpt.writing(self.output_dir / "final"):
                result.export_path = self.export()
        if self.world_size > 1:
            dist.barrier()
        return result

    def _loop(self, result: TrainResult) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = progress_bar(
            "train", self.total_steps, unit="step", initial=self.step, disable=not self.progress
        )
        try:
            self._steps(result, bar)
        finally:
            bar.close()

    def _steps(self, result: TrainResult, bar: Any) -> None:
        c = self.config
        parts = c.gradient_accumulation_steps * self.world_size
        window: list[tuple[int, torch.Tensor, int, list[str]]] = []
        window_flops = 0.0
        window_tokens = 0
        peak = peak_flops(self.device)
        started = window_start = time.perf_counter()
        window_first = self.step + 1
        grad_norm = torch.zeros((), device=self.device)
        steps = iter(self.planner)
        while self.step < self.total_steps:
            pieces = next(steps)
            micro = split_step(pieces, parts)
            first = self.rank * c.gradient_accumulation_steps
            mine = micro[first : first + c.gradient_accumulation_steps]
            labels = self._label_tokens(pieces)
            scale = self.world_size / max(labels, 1)
            loss_sum = torch.zeros((), device=self.device)
            if self.world_size == 1:
                mine = [m for m in mine if m]
            for i, part in enumerate(mine):
                loss_sum += self._micro_step(part, scale, sync=i == len(mine) - 1)
            grad_norm = self._clip_gradients()
            ids = [self.train_set.ids[p.index] for p in pieces]
            self.step += 1
            if c.nan_policy == "skip" and not self._finite(loss_sum, grad_norm):
                result.skipped_steps.append(self.step)
                logger.warning(
                    "step %d: non-finite loss or gradient, skipped (samples: %s)",
                    self.step,
                    ", ".join(ids[:20]),
                )
            else:
                self._apply_update()
                window.append((self.step, loss_sum, labels, ids))
            self._zero_grad()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            window_flops += batch_flops(self.shape, [p.length for p in pieces])
            window_tokens += labels
            bar.update(1)

            last = self.step == self.total_steps
            log = self.step % c.logging_steps == 0 or last
            stop = self._stop_agreed(log)
            periodic = c.save_steps > 0 and (self.step % c.save_steps == 0 or last)
            save = periodic or stop
            if log or save:
                now = time.perf_counter() if self.device.type != "cuda" else _synced_time()
                timing = StepTiming(
                    first_step=window_first,
                    last_step=self.step,
                    label_tokens=window_tokens,
                    seconds=now - window_start,
                    flops=window_flops,
                    peak_memory_gib=round(peak_memory_gib(self.device), 3),
                )
                result.timings.append(timing)
                row = self._log_window(window, timing, grad_norm, lr, peak, result)
                if row is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
                result.label_tokens += window_tokens
                window, window_flops, window_tokens, window_start = [], 0.0, 0, now
                window_first = self.step + 1
            if save:
                self.save_checkpoint()
                window_start = time.perf_counter()  # checkpoint time is not training time
                if stop and not last:
                    result.interrupted = True
                    break
        result.step = self.step
        result.train_seconds = time.perf_counter() - started

    @staticmethod
    def _finite(loss_sum: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """The one host sync per step that nan_policy="skip" costs."""
        return bool(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))

    def _stop_agreed(self, log_step: bool) -> bool:
        """SIGTERM seen? Alone: at every step. Under DDP the ranks agree at logging steps (the
        only place the loop may sync), so they checkpoint at the same step."""
        if self.world_size == 1:
            return self._stop_requested
        if not log_step:
            return False
        flag = torch.tensor([int(self._stop_requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _log_window(
        self,
        window: list[tuple[int, torch.Tensor, int, list[str]]],
        timing: StepTiming,
        grad_norm: torch.Tensor,
        lr: float,
        peak: float | None,
        result: TrainResult,
    ) -> dict[str, Any] | None:
        if not window:
            return None
        sums = torch.stack([loss for _, loss, _, _ in window])
        if self.world_size > 1:
            dist.all_reduce(sums)
        sums_host = sums.double().cpu().tolist()
        for (step, _, labels, ids), total in zip(window, sums_host, strict=True):
            loss = total / max(labels, 1)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"step {step}: loss is {loss} (samples: {', '.join(ids[:20])}); "
                    "lower the learning rate, check these records, or use nan_policy='skip'"
                )
            result.losses[step] = loss
        labels_total = sum(labels for _, _, labels, _ in window)
        row = {
            "step": self.step,
            "epoch": self.planner.epoch,
            "loss": sum(sums_host) / max(labels_total, 1),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": timing.tokens_per_s,
            "label_tokens": timing.label_tokens,
            "peak_memory_gib": timing.peak_memory_gib,
        }
        if peak and timing.seconds > 0:
            row["mfu"] = timing.flops / timing.seconds / (peak * self.world_size)
        self.metrics.write(row)
        return row

    # ---- export ----

    def export(self) -> Path | None:
        """Write output_dir/final: merged weights or the LoRA adapter, plus the tokenizer.
        Every rank calls it (FSDP2 gathers the shards); rank 0 writes and returns the path."""
        c = self.config
        mode = c.export if c.export != "auto" else ("adapter" if c.use_lora else "merged")
        if mode == "adapter" and not c.use_lora:
            raise ValueError("export='adapter' needs LoRA (lora_r > 0)")
        if mode == "none":
            return None
        sharded = self.strategy == "fsdp"
        merge_from_base = mode == "merged" and c.use_lora and (c.load_in_4bit or sharded)
        if merge_from_base and self.model_spec is None:
            raise ValueError(
                "merging a QLoRA or FSDP2 LoRA adapter reloads the base model: pass its path, "
                "or export='adapter'"
            )
        gathered: dict[str, Any] = {}
        if sharded:
            target = self.model if c.use_lora else causal_lm(self.model)
            gathered = {"state_dict": distributed.gather_state_dict(target)}
        if self.rank != 0:
            return None
        final = self.output_dir / ".final.partial"  # renamed to final/ once whole
        shutil.rmtree(final, ignore_errors=True)
        if mode == "adapter":
            self.model.save_pretrained(final, **gathered)
        elif merge_from_base:
            final.mkdir(parents=True, exist_ok=True)
            adapter = self.output_dir / "final-adapter"
            self.model.save_pretrained(adapter, **gathered)
            from peft import PeftModel

            dtype = torch.bfloat16 if c.bf16 else torch.float32
            unquantised = replace(c, load_in_4bit=False)
            base, _ = load_model(self.model_spec, unquantised, torch.device("cpu"), dtype)
            PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(final)
        elif c.use_lora:
            self.model.merge_and_unload().save_pretrained(final)
        else:
            lm = causal_lm(self.model)
            if sharded and c.bf16:  # the gathered fp32 masters, saved as a single GPU run saves
                weights = gathered["state_dict"]
                gathered["state_dict"] = {n: t.to(torch.bfloat16) for n, t in weights.items()}
                lm.config.dtype = torch.bfloat16
            lm.save_pretrained(final, **gathered)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(final)
        done = self.output_dir / "final"
        shutil.rmtree(done, ignore_errors=True)
        final.rename(done)
        return done


def _synced_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
