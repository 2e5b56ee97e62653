"""Shared benchmark plumbing: environment stamp, timing, CSV append, markdown and plot."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cd_fast.data import AtomicWriter


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where and with what a result was measured (one stamp per run)."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    # bench/gpu.sh passes the commit its files were prepared at: the GPU machine's copy of the
    # tree may carry a stale .git.
    commit = os.environ.get("CD_FAST_COMMIT") or _git("rev-parse", "--short", "HEAD") or "unknown"
    if "CD_FAST_COMMIT" not in os.environ and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "gpu": gpu,
        "cpu": cpu_name(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
    }


def time_cpu(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def time_device(fn: Callable[[], Any], device: Any, repeats: int = 3) -> float:
    """Median milliseconds of `fn`: triton.testing.do_bench (CUDA events) on a GPU, wall clock on
    the CPU."""
    if getattr(device, "type", str(device)) == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    return 1e3 * time_cpu(fn, repeats=repeats)


def time_forward_backward(
    forward: Callable[[], Any], device: Any, label: str
) -> tuple[float, float | None] | None:
    """(median ms, peak GiB) of `forward().sum().backward()`; None, said, when it runs out of
    memory (the dense-mask and padded baselines at long lengths)."""
    import torch

    peak_memory_reset(device)
    try:
        ms = time_device(lambda: forward().sum().backward(), device, repeats=1)
    except torch.OutOfMemoryError:
        print(f"{label}: out of memory")
        torch.cuda.empty_cache()
        return None
    return ms, peak_memory_gib(device)


def peak_memory_reset(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: Any) -> float | None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def lognormal_lengths(
    mean: float,
    budget: int | None = None,
    count: int | None = None,
    seed: int = 0,
    sigma: float = 0.7,
    low: int = 64,
    high: int = 16384,
) -> list[int]:
    """Trace-like lengths (lognormal around `mean`): `count` of them, or as many as fit in
    `budget` tokens (the anchors in shared/tools draw them the same way)."""
    import math

    import numpy as np

    if (budget is None) == (count is None):
        raise ValueError("give exactly one of budget and count")
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    total = 0
    while count is None or len(lengths) < count:
        length = int(np.clip(rng.lognormal(math.log(mean), sigma), low, high))
        if budget is not None and total + length > budget:
            break
        lengths.append(length)
        total += length
    return lengths


def append_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows (atomically rewriting the file; columns are the union, in first-seen order)."""
    existing: list[dict[str, Any]] = []
    columns: list[str] = []
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            existing = list(reader)
    for row in rows:
        columns += [key for key in row if key not in columns]
    with AtomicWriter(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(existing)
        writer.writerows(rows)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    results_dir: Path,
    name: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    title: str,
    intro: str,
    rerun: str,
    extra: str = "",
    append: bool = True,
) -> str:
    """Append rows to NAME.csv (unless the caller already did), write NAME.md (title, intro,
    table, extra, how to rerun) and print the table; returns it."""
    if append:
        append_csv(results_dir / f"{name}.csv", rows)
    table = markdown_table(rows, columns)
    (results_dir / f"{name}.md").write_text(
        f"# {title}\n\n{intro}\n\n{table}\n{extra}\nRerun: `{rerun}`.\n", encoding="utf-8"
    )
    print(table)
    return table


def bar_plot(
    path: Path, labels: Sequence[str], values: Sequence[float], ylabel: str, title: str
) -> bool:
    """PNG bar chart; returns False (and says so) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    bars = ax.bar(labels, values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_yscale("log")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
