"""The process a stage runs in: torchrun rank info, device choice, backend choice, warn-once
logging, batching, record limits and progress bars. Every stage imports these; none re-reads
the environment itself."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch loads with the first device chosen, not with every import of this
    import torch

from tqdm import tqdm

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
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: this machine has no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank_info().local_rank)
    return device


def triton_can_run(device: torch.device) -> bool:
    """Whether a Triton kernel can launch for tensors on `device`: a CUDA device, or any device
    under the interpreter (TRITON_INTERPRET=1, how the CPU tests run the kernels)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


_chosen: dict[tuple[str, Hashable, str | None], str] = {}
_backend_logger = logging.getLogger("cd_fast.backends")


def pick_backend(
    what: str,
    variable: str,
    choices: Sequence[str],
    available: Callable[[], Sequence[str]],
    where: Hashable,
    slow: Sequence[str] = (),
    hint: str = "",
) -> str:
    """The backend that runs `what` on `where` (a device, or a device and dtype): the one the
    environment `variable` forces (refused when it is not one of `choices`, or not among
    `available()` here; `hint` says how to get it), else the first of `available()`, fastest
    first. Logged once per choice, as a warning when it is one of the `slow` fallbacks. Cheap
    enough for every call: `available()` runs once per (what, where, forced)."""
    forced = os.environ.get(variable) or None
    key = (what, where, forced)
    if key in _chosen:
        return _chosen[key]
    if forced is not None and forced not in choices:
        raise ValueError(f"{variable}={forced!r}: expected one of {', '.join(choices)}")
    found = list(available())
    if forced is not None and forced not in found:
        raise RuntimeError(
            f"{variable}={forced} is not available on {where} (available: {', '.join(found)})"
            + (f"; {hint}" if hint else "")
        )
    choice = forced or found[0]
    level = logging.WARNING if choice in slow else logging.INFO
    _backend_logger.log(level, "cd_fast %s on %s: %s (available: %s)", what, where, choice, found)
    _chosen[key] = choice
    return choice


_warned: set[tuple[str, str]] = set()


def warn_once(
    logger: logging.Logger, message: str, *args: object, level: int = logging.WARNING
) -> None:
    """Log a warning the first time this logger sees this message (fallbacks, slow paths)."""
    key = (logger.name, message)
    if key not in _warned:
        _warned.add(key)
        logger.log(level, message, *args)


def kernel_fallback_once(logger: logging.Logger, device: torch.device, kernel: str) -> None:
    """A Triton kernel runs its torch reference: expected on the CPU (info, once), a warning on
    any other device."""
    level = logging.INFO if device.type == "cpu" else logging.WARNING
    warn_once(
        logger,
        "%s: Triton needs a CUDA device (or TRITON_INTERPRET=1); using the torch path on %s",
        kernel,
        device,
        level=level,
    )


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


class StopSignals:
    """While active (in the main thread), SIGTERM and Ctrl-C (SIGINT) only note a stop request
    (`received`, the signal's number): a long job finishes its current step, checkpoints and
    returns, and its command exits 128 + the signal's number (143, 130). A second Ctrl-C
    interrupts at once. Elsewhere (a thread) it does nothing."""

    STOPPING = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            print(f"\nsignal {signum}: stopping after this step's checkpoint", file=sys.stderr)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.STOPPING:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


PROGRESS_SECONDS = float(os.environ.get("CD_FAST_PROGRESS_SECONDS") or 30)
"""Seconds between progress lines when stderr is not a terminal (a log file, a pipe)."""


class _ProgressLines:
    """tqdm's output when stderr is not a terminal: each refresh becomes one line of its own,
    instead of carriage returns that pile up in a log."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(desc: str, total: int | None = None, unit: str = "record", **options: Any) -> tqdm:
    """A bar counting units of work (records, steps; not bytes read). On a terminal it redraws;
    else it prints one line every PROGRESS_SECONDS (CD_FAST_PROGRESS_SECONDS), and one at the
    end of a run that printed any. `options` go to tqdm (initial, disable)."""
    if sys.stderr.isatty():
        return tqdm(
            total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, **options
        )
    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        file=_ProgressLines(sys.stderr),
        mininterval=PROGRESS_SECONDS,
        maxinterval=PROGRESS_SECONDS,
        delay=PROGRESS_SECONDS,  # a run shorter than that logs no progress, only its result
        ncols=100,
        **options,
    )
