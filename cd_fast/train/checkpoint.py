"""Atomic training checkpoints: output_dir/checkpoint-STEP/ appears whole or not at all.

A checkpoint holds what the next step depends on: the trained tensors (fp32 masters when the
model computes in bf16), optimizer and scheduler state, the planner position, and every RNG
(python, numpy, torch CPU and CUDA, per rank), so a resumed run repeats the exact trajectory.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
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
    """Write checkpoint-STEP through a temp folder + rename, then drop all but the `keep` newest."""
    final = output_dir / f"{PREFIX}{step}"
    temp = output_dir / f".{PREFIX}{step}.partial"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    cpu_tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    save_file(cpu_tensors, temp / "model.safetensors")
    torch.save({"optimizer": optimizer, "scheduler": scheduler}, temp / "optimizer.pt")
    for rank, rng in enumerate(rank_rngs):
        torch.save(rng, temp / f"rng-{rank}.pt")
    (temp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    temp.rename(final)
    if keep is not None:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path, rank: int) -> dict[str, Any]:
    state = json.loads((path / STATE_FILE).read_text())
    rng_file = path / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise ValueError(
            f"{path}: no RNG state for rank {rank}; resume with the world size it was saved with"
        )
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    return {
        "state": state,
        "tensors": load_file(path / "model.safetensors"),
        "optimizer": saved["optimizer"],
        "scheduler": saved["scheduler"],
        "rng": torch.load(rng_file, weights_only=False),
    }
