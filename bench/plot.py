"""PNG plots of the latest measurements in bench/results/*.csv (the rows of the most recent
commit and GPU per benchmark): token_scores ms, attention TFLOP/s, pack ms, train tok/s."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .harness import bar_plot

# benchmark -> (value column, what it is, the columns that make a bar's label)
PLOTS = {
    "token_scores": ("ms", "ms (lower is better)", ("hidden", "provider")),
    "attention": ("tflops", "TFLOP/s (higher is better)", ("mean_len", "provider")),
    "pack": ("ms", "ms (lower is better)", ("tokens", "provider")),
    "train": ("label_tok_per_s", "label tokens/s (higher is better)", ("run", "provider")),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmarks", nargs="+", default=list(PLOTS), choices=list(PLOTS))


def latest_rows(path: Path, benchmark: str) -> list[dict]:
    """Rows of `benchmark` from the most recent (commit, gpu) in the CSV, with a number."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("benchmark") == benchmark]
    if not rows:
        return []
    last = max(rows, key=lambda r: r["date"])
    value = PLOTS[benchmark][0]
    return [
        r
        for r in rows
        if (r["commit"], r["gpu"]) == (last["commit"], last["gpu"])
        and r.get(value, "").replace(".", "", 1).isdigit()
    ]


def run(args: argparse.Namespace) -> list[dict]:
    written = []
    for name in args.benchmarks:
        rows = latest_rows(args.results_dir / f"{name}.csv", name)
        if not rows:
            print(f"{name}: no numeric rows in {args.results_dir / f'{name}.csv'}")
            continue
        value, ylabel, keys = PLOTS[name]
        labels = [" / ".join(r[k] for k in keys if r.get(k)) for r in rows]
        title = f"{name}: {rows[0]['gpu']}, commit {rows[0]['commit']}, {rows[0]['date'][:10]}"
        out = args.results_dir / f"{name}.png"
        if bar_plot(out, labels, [float(r[value]) for r in rows], ylabel, title):
            written.append({"plot": str(out)})
            print(f"wrote {out}")
    return written
