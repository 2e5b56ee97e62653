"""`cdfast report`: the paper-style table and the trade-off plots (accuracy against training
tokens and against output tokens, one curve per method), from the saved results of demo runs
(demo.json). The table keeps apart the three ratios the papers do: the asked budget, the
realised training-token ratio and the student's output-length ratio at inference."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = (
    "run",
    "asked budget",
    "train tokens",
    "output tokens",
    "train time (s)",
    "accuracy",
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
        run.setdefault("method", name.split("@")[0])
        cells = {
            "run": name,
            "asked budget": f"{run.get('budget', 1.0):g}",
            "train tokens": _relative(run, base, "train_label_tokens"),
            "output tokens": _relative(run, base, "mean_output_tokens"),
            "train time (s)": _relative(run, base, "train_seconds"),
            "accuracy": _relative(run, base, "accuracy"),
            "accuracy / 1k tokens": _relative(run, base, "accuracy_per_1k_tokens"),
        }
        rows.append({**run, "run": name, "cells": cells})
    budgets = results.get("budgets", [results.get("budget")])
    label = (
        f"{Path(run_dir).name}: {results['size']} demo, budgets "
        f"{', '.join(f'{b:g}' for b in budgets)}, {results['train_records']} training / "
        f"{results['eval_records']} eval questions, {results['device']}, "
        f"{results['seconds']:g} s in all"
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
    original = next(r for r in rows if r["run"] == "original")
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["run"] != "original":
            curves.setdefault(row["method"], []).append(row)
    path = out_dir / f"{stem}-tradeoff.png"
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in (
        (axes[0], "train_label_tokens", "training tokens (x original)"),
        (axes[1], "mean_output_tokens", "student's mean output tokens (x original)"),
    ):
        for method, points in curves.items():
            points = sorted([*points, original], key=lambda r: r[key])
            axis.plot(
                [p[key] / max(original[key], 1e-9) for p in points],
                [p["accuracy"] for p in points],
                marker="o",
                label=method,
            )
            for point in points[:-1] if points[-1] is original else points:
                axis.annotate(
                    f"{point.get('budget', 1):g}",
                    (point[key] / max(original[key], 1e-9), point["accuracy"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        axis.scatter([1.0], [original["accuracy"]], color="black", zorder=3, label="original")
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy")
        axis.grid(alpha=0.3)
    axes[0].set_title("accuracy vs training tokens")
    axes[1].set_title("accuracy vs output length")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path.name]


def role_table(run_dir: Path) -> str | None:
    """Markdown: per compressed set, each step role's share of the text before -> after
    (`cdfast compress` summaries in data/sets.json); None when the run has none."""
    path = Path(run_dir) / "data" / "sets.json"
    if not path.is_file():
        return None
    sets = json.loads(path.read_text())
    found = {name: s["summary"]["roles"] for name, s in sets.items() if s["summary"].get("roles")}
    if not found:
        return None
    roles = list(next(iter(found.values())))
    lines = ["| set | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for name, shares in found.items():
        cells = []
        for role in roles:
            share = shares[role]
            after = "?" if share["after"] is None else f"{share['after']:.0%}"
            cells.append(f"{share['before']:.0%} -> {after}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
            "on the original traces. Train tokens: the realised training-token ratio; output "
            "tokens: the student's mean answer length on the held-out questions.\n"
        )
        parts += [f"![{p}]({p})\n" for p in plots]
        roles = role_table(run_dir)
        if roles:
            parts.append(
                "What each compressed set did to the traces' step roles (share of the text "
                f"before -> after, `cd_fast.compress.roles`):\n\n{roles}\n"
            )
    output.write_text("\n".join(parts), encoding="utf-8")
    return first_table
