"""The process a stage runs in: torchrun rank info, device choice, warn-once logging, batching
and record limits. Every stage imports these; none re-reads the environment itself."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int


def rank_info() -> RankInfo:
    """This process's place in a torchrun launch (one process alone: 0 of 1, local 0)."""
    return RankInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def choose_device(requested: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when there is one, else the CPU. A CUDA device without
    an index gets this process's local rank (torch.cuda.set_device needs an index)."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank_info().local_rank)
    return device


def triton_can_run(device: torch.device) -> bool:
    """Whether a Triton kernel can launch for tensors on `device`: a CUDA device, or any device
    under the interpreter (TRITON_INTERPRET=1, how the CPU tests run the kernels)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


_warned: set[tuple[str, str]] = set()


def warn_once(logger: logging.Logger, message: str, *args: object) -> None:
    """Log a warning the first time this logger sees this message (fallbacks, slow paths)."""
    key = (logger.name, message)
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def batched(
    items: Iterable[T],
    size: int,
    cost: Callable[[T], int] | None = None,
    max_cost: int | None = None,
) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last one shorter); with `cost`, a list also ends
    once its items' costs reach `max_cost` (e.g. characters of text)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    batch: list[T] = []
    spent = 0
    for item in items:
        batch.append(item)
        if cost is not None:
            spent += cost(item)
        if len(batch) == size or (max_cost is not None and spent >= max_cost):
            yield batch
            batch, spent = [], 0
    if batch:
        yield batch


def token_batches(sizes: Sequence[int], budget: int) -> Iterator[range]:
    """Consecutive index ranges whose sizes sum to at most `budget` tokens (an item larger than
    the budget goes alone): the packed batches of a forward pass."""
    start, tokens = 0, 0
    for index, size in enumerate(sizes):
        if index > start and tokens + size > budget:
            yield range(start, index)
            start, tokens = index, 0
        tokens += size
    if start < len(sizes):
        yield range(start, len(sizes))


def take(items: Iterable[T], limit: int | None) -> Iterator[T]:
    """The first `limit` items (all of them for None), read lazily."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    yield from items if limit is None else itertools.islice(items, limit)
