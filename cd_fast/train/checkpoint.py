"""A training run's output folder: atomic checkpoints (output_dir/checkpoint-STEP/ appears whole
or not at all), the `Checkpointer` that saves and restores a run's state in them, and
`TrainRun`, the folder's run protocol (run.json, the lock, final/, --resume, --overwrite).

A checkpoint holds what the next step depends on: the trained tensors (fp32 masters when the
model computes in bf16), optimizer and scheduler state, the planner position, and every RNG
(python, numpy, torch CPU and CUDA, per rank), so a resumed run repeats the exact trajectory.
One process or DDP: model.safetensors + optimizer.pt from rank 0. FSDP2: `sharded/`, a
torch.distributed.checkpoint folder every rank writes its shards into (on a filesystem every
node sees), beside the same trainer files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cd_fast.runs import RunFolder
from cd_fast.train import distributed
from cd_fast.train.optim import lr_kind_kept

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
SHARDED_FOLDER = "sharded"  # FSDP2 runs: the DCP shards of weights and optimizer states
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_OS_ERROR = re.compile(r"os error (\d+)")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn the write failures torch and safetensors report in their own words (a full disk,
    a file size limit) into the OSError they are, naming `path`."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        text = str(error)
        found = _OS_ERROR.search(text)
        if found:
            code = int(found.group(1))
        elif "inline_container" in text:  # torch.save: a short write
            code = errno.ENOSPC if shutil.disk_usage(path.parent).free < 1 << 30 else errno.EIO
        else:
            raise
        raise OSError(code, f"{os.strerror(code)} ({text.splitlines()[0]})", str(path)) from error


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Drop the staging folders of checkpoints a killed run did not finish."""
    stale = sorted(output_dir.glob(f".{PREFIX}*.partial")) if output_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (unfinished temp folders never match)."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def staging_folder(output_dir: Path, step: int) -> Path:
    """Where checkpoint-STEP is written before its rename (every rank can name it)."""
    return output_dir / f".{PREFIX}{step}.partial"


def start_checkpoint(output_dir: Path, step: int) -> Path:
    """An empty staging folder for checkpoint-STEP (a leftover of a killed save is dropped)."""
    temp = staging_folder(output_dir, step)
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    return temp


def finish_checkpoint(
    output_dir: Path,
    step: int,
    scheduler: dict[str, Any],
    state: dict[str, Any],
    rank_rngs: list[dict[str, Any]],
    keep: int | None,
    optimizer: dict[str, Any] | None = None,
) -> Path:
    """Write the trainer's own files into the staging folder, rename it to checkpoint-STEP,
    then drop all but the `keep` newest checkpoints."""
    temp = staging_folder(output_dir, step)
    final = output_dir / f"{PREFIX}{step}"
    try:
        with writing(temp / "optimizer.pt"):
            torch.save({"optimizer": optimizer, "scheduler": scheduler}, temp / "optimizer.pt")
        for rank, rng in enumerate(rank_rngs):
            with writing(temp / f"rng-{rank}.pt"):
                torch.save(rng, temp / f"rng-{rank}.pt")
        (temp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)  # the previous checkpoint stays the latest
        raise
    if final.exists():
        shutil.rmtree(final)
    temp.rename(final)
    if keep is not None:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint(
    output_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    state: dict[str, Any],
    rank_rngs: list[dict[str, Any]],
    keep: int | None,
) -> Path:
    """One process's checkpoint: the trained tensors in model.safetensors, the optimizer whole."""
    temp = start_checkpoint(output_dir, step)
    cpu_tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    try:
        with writing(temp / "model.safetensors"):
            save_file(cpu_tensors, temp / "model.safetensors")
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return finish_checkpoint(output_dir, step, scheduler, state, rank_rngs, keep, optimizer)


def read_checkpoint(path: Path, rank: int, world_size: int) -> dict[str, Any]:
    """The checkpoint's trainer files (and its tensors unless they are DCP shards, read by
    `distributed.load_sharded`). `rng` is None when it was saved on another world size."""
    state = json.loads((path / STATE_FILE).read_text())
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    rng_file = path / f"rng-{rank}.pt"
    same_world = state.get("world_size", 1) == world_size and rng_file.is_file()
    sharded = (path / SHARDED_FOLDER).is_dir()
    try:
        tensors = None if sharded else load_file(path / "model.safetensors")
    except SafetensorError as error:
        raise ValueError(
            f"{path}: its model.safetensors is damaged ({error}): remove this checkpoint to "
            "resume from the one before it"
        ) from error
    return {
        "state": state,
        "tensors": tensors,
        "optimizer": saved["optimizer"],
        "scheduler": saved["scheduler"],
        "rng": torch.load(rng_file, weights_only=False) if same_world else None,
    }


@dataclass
class TrainingState:
    """What a checkpoint saves and restores of a run (the Trainer's parts)."""

    module: nn.Module  # the loss module: FSDP2's shards live in it
    trained: list[tuple[str, nn.Parameter]]  # the trained parameters, by name
    masters: list[torch.Tensor] | None  # their fp32 master copies (bf16 training), else None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    planner: Any  # train.packing.StepPlanner


class Checkpointer:
    """Writes and reads output_dir/checkpoint-STEP for one rank of a run: rank 0 writes the
    trained tensors and the trainer's files, every rank its RNG state (and its FSDP2 shards)."""

    def __init__(self, output_dir: Path, keep: int | None, rank: int, world_size: int, sharded):
        self.output_dir = output_dir
        self.keep = keep
        self.rank, self.world_size = rank, world_size
        self.sharded = sharded  # FSDP2: the weights and optimizer states are DCP shards

    def save(self, state: TrainingState, step: int, total_steps: int) -> Path | None:
        """Write checkpoint-STEP (collective under torchrun); returns its path on rank 0."""
        rngs = [rng_state()]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        trainer_state = {
            "planner": state.planner.state_dict(),
            "total_steps": total_steps,
            "world_size": self.world_size,
        }
        scheduler = state.scheduler.state_dict()
        path = None
        if self.sharded:
            if self.rank == 0:
                start_checkpoint(self.output_dir, step)
            dist.barrier()
            folder = staging_folder(self.output_dir, step) / SHARDED_FOLDER
            distributed.save_sharded(folder, state.module, state.optimizer)
            if self.rank == 0:
                path = finish_checkpoint(
                    self.output_dir, step, scheduler, trainer_state, rngs, self.keep
                )
        elif self.rank == 0:
            values = state.masters or [p for _, p in state.trained]
            tensors = {name: v for (name, _), v in zip(state.trained, values, strict=True)}
            optimizer = state.optimizer.state_dict()
            path = write_checkpoint(
                self.output_dir, step, tensors, optimizer, scheduler, trainer_state, rngs, self.keep
            )
        if self.world_size > 1:
            dist.barrier()
        return path

    def load(self, path: Path, state: TrainingState, seed: int) -> int:
        """Restore `state` from a checkpoint; returns its step. Saved on another number of
        ranks, the RNG streams restart from the seed (logged)."""
        saved = read_checkpoint(path, self.rank, self.world_size)
        sharded = saved["tensors"] is None
        if sharded != self.sharded:
            how = "under torchrun with --distributed fsdp" if sharded else "alone or with ddp"
            raise ValueError(
                f"{path} was saved {'by FSDP2' if sharded else 'without FSDP2'}: resume it {how}"
            )
        with lr_kind_kept(state.optimizer):
            if sharded:
                distributed.load_sharded(path / SHARDED_FOLDER, state.module, state.optimizer)
            else:
                _load_tensors(path, saved["tensors"], state)
                state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.planner.load_state_dict(saved["state"]["planner"])
        step = int(saved["state"]["step"])
        if saved["rng"] is not None:
            set_rng_state(saved["rng"])
        else:
            seed_everything(seed + step)
            if self.rank == 0:
                logger.warning(
                    "%s was saved by %d ranks, resuming on %d: same data order and step "
                    "contents, but random streams (dropout) restart from the seed",
                    path,
                    saved["state"].get("world_size", 1),
                    self.world_size,
                )
        return step


def _load_tensors(path: Path, tensors: dict[str, torch.Tensor], state: TrainingState) -> None:
    missing = [n for n, _ in state.trained if n not in tensors]
    if missing:
        raise ValueError(
            f"{path}: checkpoint lacks {len(missing)} trained tensors, e.g. {missing[0]}"
        )
    with torch.no_grad():
        for name, param in state.trained:
            param.copy_(tensors[name])
        for (name, _), master in zip(state.trained, state.masters or [], strict=False):
            master.copy_(tensors[name])


class TrainRun(RunFolder):
    """train's output folder: run.json (the manifest), checkpoint-STEP/ folders, final/ (the
    exported model), train_config.json, metrics.jsonl, .lock. --overwrite-output-dir clears a
    finished or checkpointed run first; stale staging folders of a killed save are dropped."""

    def __init__(self, output: Path, manifest: dict[str, Any], resume: bool, overwrite: bool):
        super().__init__(output, manifest, resume)
        self.overwrite = overwrite

    @property
    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.output)

    def work(self) -> str | None:
        if (self.output / "final").exists():
            return "a finished model (final/)"
        return "checkpoints" if self.checkpoints else None

    def refusal(self, work: str) -> str:
        if work == "checkpoints":
            return (
                f"{self.output} already holds checkpoints: pass --resume to continue that run, "
                "--overwrite-output-dir to start over, or choose another output_dir"
            )
        return (
            f"{self.output} holds {work}: pass --overwrite-output-dir to train again from "
            "scratch, --resume to continue that run, or choose another output_dir"
        )

    def scratch(self) -> list[Path]:
        return [self.output / "train_config.json"]

    def check(self) -> None:
        if self.overwrite:
            return  # the earlier run is cleared once the run starts
        super().check()

    def start(self) -> None:
        """Clear an earlier run (--overwrite-output-dir) and the staging folders of a killed
        save, then record the run."""
        if self.overwrite:
            for path in [*self.checkpoints, self.output / "final", self.output / "final-adapter"]:
                shutil.rmtree(path, ignore_errors=True)
        for stale in remove_stale_staging(self.output):
            logger.info("removed %s (a checkpoint a killed run did not finish)", stale.name)
        super().start()

    def record(self, settings: dict[str, Any]) -> None:
        """train_config.json: the settings the run trains with, resolved."""
        text = json.dumps(settings, indent=1, default=str)
        (self.output / "train_config.json").write_text(text)
