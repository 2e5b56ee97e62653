"""`cdfast report`: the paper-style table, the accuracy-vs-output-tokens trade-off plot and
training-time bars, from the saved results of demo runs (demo.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = (
    "run",
    "train tokens",
    "train time (s)",
    "accuracy",
    "output tokens",
    "accuracy / 1k tokens",
)


def _rows(run_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    path = Path(run_dir) / "demo.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a `cdfast demo` run folder")
    results = json.loads(path.read_text())
    base = results["runs"]["original"]
    rows = []
    for name, run in results["runs"].items():
        cells = {
            "run": name,
            "train tokens": _relative(run, base, "train_label_tokens"),
            "train time (s)": _relative(run, base, "train_seconds"),
            "accuracy": _relative(run, base, "accuracy"),
            "output tokens": _relative(run, base, "mean_output_tokens"),
            "accuracy / 1k tokens": _relative(run, base, "accuracy_per_1k_tokens"),
        }
        rows.append({**run, "run": name, "cells": cells})
    label = (
        f"{Path(run_dir).name}: {results['size']} demo, budget {results['budget']}, "
        f"{results['train_records']} training / {results['eval_records']} eval questions, "
        f"{results['device']}"
    )
    return label, rows


def _relative(run: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """The value and, when the original's is not zero, its ratio to the original's."""
    if not base[key]:
        return f"{run[key]:g}"
    return f"{run[key]:g} ({run[key] / base[key]:.2f}x)"


def _plots(rows: list[dict[str, Any]], out_dir: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the report has no plots")
        return []
    trade = out_dir / f"{stem}-tradeoff.png"
    figure, axis = plt.subplots(figsize=(6, 4))
    for row in rows:
        axis.scatter(row["mean_output_tokens"], row["accuracy"], s=40)
        axis.annotate(
            row["run"],
            (row["mean_output_tokens"], row["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    axis.set_xlabel("mean output tokens")
    axis.set_ylabel("accuracy")
    axis.set_title("accuracy vs output length")
    figure.tight_layout()
    figure.savefig(trade, dpi=120)
    plt.close(figure)
    bars = out_dir / f"{stem}-train-time.png"
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar([r["run"] for r in rows], [r["train_seconds"] for r in rows])
    axis.set_ylabel("training time (s)")
    axis.tick_params(axis="x", labelrotation=20)
    figure.tight_layout()
    figure.savefig(bars, dpi=120)
    plt.close(figure)
    return [trade.name, bars.name]


def write_report(run_dirs: list[Path], output: Path) -> str:
    """Write the markdown report (and its PNGs beside it); returns the first run's table."""
    output.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# cd_fast: compressed-trace distillation report\n"]
    first_table = ""
    for index, run_dir in enumerate(run_dirs):
        label, rows = _rows(run_dir)
        header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
        body = "\n".join("| " + " | ".join(r["cells"][c] for c in COLUMNS) + " |" for r in rows)
        table = f"{header}\n{body}"
        first_table = first_table or table
        plots = _plots(rows, output.parent, f"{output.stem}-{index}")
        parts.append(
            f"## {label}\n\n{table}\n\nRatios in brackets are to the student trained "
            "on the original traces.\n"
        )
        parts += [f"![{p}]({p})\n" for p in plots]
    output.write_text("\n".join(parts), encoding="utf-8")
    return first_table
