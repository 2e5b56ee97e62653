"""Atomic training checkpoints: output_dir/checkpoint-STEP/ appears whole or not at all.

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
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
SHARDED_FOLDER = "sharded"  # FSDP2 runs: the DCP shards of weights and optimizer states
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


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


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


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
    return {
        "state": state,
        "tensors": None if sharded else load_file(path / "model.safetensors"),
        "optimizer": saved["optimizer"],
        "scheduler": saved["scheduler"],
        "rng": torch.load(rng_file, weights_only=False) if same_world else None,
    }
