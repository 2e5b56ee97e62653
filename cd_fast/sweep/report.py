"""`cdfast report`: the paper-style tables, criterion agreement, trade-off plots and the
condition-aware summary, from saved sweeps (sweep.json: `cdfast sweep` and `cdfast demo` write
it). The tables keep apart the three ratios the papers do: the asked budget, the realised
training-token ratio and the student's output-length ratio at inference; with records of several
domains, each domain gets its own table, plots and summary lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cd_fast.compress.agreement import agreement_table
from cd_fast.sweep.config import ORIGINAL

logger = logging.getLogger(__name__)

RESULTS = "sweep.json"
ALL = "all records"
COLUMNS = (
    "run",
    "asked budget",
    "train tokens",
    "output tokens",
    "train time (s)",
    "accuracy",
    "accuracy / 1k tokens",
)


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a `cdfast sweep` or `cdfast demo` run folder")
    return json.loads(path.read_text())


def domain_rows(results: dict[str, Any], domain: str) -> list[dict[str, Any]]:
    """Every run's numbers on one domain (ALL: every record): accuracy, output tokens and
    accuracy per 1k tokens from its eval, training tokens of that domain's traces."""
    rows = []
    for name, run in results["runs"].items():
        row = {**run, "run": name}
        if domain != ALL:
            found = (run.get("by_domain") or {}).get(domain)
            if found is None:
                continue
            row.update({k: found[k] for k in ("accuracy", "mean_output_tokens")})
            row["accuracy_per_1k_tokens"] = found["accuracy_per_1k_tokens"]
            row["train_label_tokens"] = run["train_tokens_by_domain"].get(domain, 0)
        rows.append(row)
    return rows


def _relative(run: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """The value (a count in full) and, when the original's is not zero, its ratio to the
    original's."""
    value = f"{run[key]}" if isinstance(run[key], int) else f"{run[key]:g}"
    if not base[key]:
        return value
    return f"{value} ({run[key] / base[key]:.2f}x)"


def table(rows: list[dict[str, Any]]) -> str:
    base = next(r for r in rows if r["run"] == ORIGINAL)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [
            row["run"],
            f"{row.get('budget', 1.0):g}",
            *(
                _relative(row, base, key)
                for key in (
                    "train_label_tokens",
                    "mean_output_tokens",
                    "train_seconds",
                    "accuracy",
                    "accuracy_per_1k_tokens",
                )
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(rows: list[dict[str, Any]], domain: str) -> list[str]:
    """Per budget, the cell that keeps the most accuracy per output token, and the most
    accurate one when they differ."""
    base = next(r for r in rows if r["run"] == ORIGINAL)
    lines = []
    for budget in sorted({r["budget"] for r in rows if r["run"] != ORIGINAL}):
        cells = [r for r in rows if r["run"] != ORIGINAL and r["budget"] == budget]
        best = max(cells, key=lambda r: (r["accuracy_per_1k_tokens"], r["accuracy"]))
        line = f"- {domain}, budget {budget:g}: **{best['run']}** keeps the most accuracy per token"
        line += f" ({_ratios(best, base)})"
        top = max(cells, key=lambda r: (r["accuracy"], r["accuracy_per_1k_tokens"]))
        if top is not best:
            line += f"; the most accurate is {top['run']} ({_ratios(top, base)})"
        lines.append(line + ".")
    return lines


def _ratios(row: dict[str, Any], base: dict[str, Any]) -> str:
    def ratio(key: str) -> str:
        return f"{row[key] / base[key]:.2f}x" if base[key] else "-"

    return (
        f"accuracy {row['accuracy']:g}, {ratio('accuracy')} the original's, at "
        f"{ratio('mean_output_tokens')} its output tokens and {ratio('train_label_tokens')} its "
        "training tokens"
    )


def _plots(rows: list[dict[str, Any]], path: Path, title: str) -> list[str]:
    """Accuracy against training tokens and against output tokens, one curve per family."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the report has no plots")
        return []
    original = next(r for r in rows if r["run"] == ORIGINAL)
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["run"] != ORIGINAL:
            curves.setdefault(row["run"].rsplit("@", 1)[0], []).append(row)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in (
        (axes[0], "train_label_tokens", "training tokens (x original)"),
        (axes[1], "mean_output_tokens", "student's mean output tokens (x original)"),
    ):
        scale = max(original[key], 1e-9)
        for family, points in curves.items():
            points = sorted(points, key=lambda r: r[key])
            axis.plot(
                [p[key] / scale for p in points],
                [p["accuracy"] for p in points],
                marker="o",
                label=family,
            )
            for point in points:
                axis.annotate(
                    f"{point['budget']:g}",
                    (point[key] / scale, point["accuracy"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        axis.scatter([1.0], [original["accuracy"]], color="black", zorder=3, label=ORIGINAL)
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy")
        axis.grid(alpha=0.3)
    axes[0].set_title(f"{title}: accuracy vs training tokens")
    axes[1].set_title(f"{title}: accuracy vs output length")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path.name]


def role_table(run_dir: Path, names: list[str]) -> str | None:
    """Markdown: per compressed set, each step role's share of the text before -> after
    (the sets' compress summaries, data/NAME.summary.json); None when no set has them."""
    found = {}
    for name in names:
        path = Path(run_dir) / "data" / f"{name}.summary.json"
        roles = json.loads(path.read_text()).get("roles") if path.is_file() else None
        if roles:
            found[name] = roles
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


def agreement_markdown(results: dict[str, Any]) -> str | None:
    rows = results.get("agreement") or []
    if not rows:
        return None
    parts = []
    for unit in dict.fromkeys(r["granularity"] for r in rows):
        found = [r for r in rows if r["granularity"] == unit]
        parts.append(f"Units: {unit}s.\n\n{agreement_table(found)}\n")
    return "\n".join(parts)


def _label(run_dir: Path, results: dict[str, Any]) -> str:
    budgets = results["config"]["budgets"]
    world = f"{results['size']} demo, " if "size" in results else ""
    return (
        f"{Path(run_dir).name}: {world}budgets {', '.join(f'{b:g}' for b in budgets)}, "
        f"{results['train_records']} training / {results['eval_records']} eval questions, "
        f"{results['device']}, {results['seconds']:g} s in all"
    )


def write_report(run_dirs: list[Path], output: Path) -> str:
    """Write the markdown report (its PNGs and agreement.md beside it); returns the first
    run's table over all records."""
    output.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# cd_fast: compressed-trace distillation report\n"]
    first_table = ""
    for index, run_dir in enumerate(run_dirs):
        results = read_results(run_dir)
        parts.append(f"## {_label(run_dir, results)}\n")
        domains = [d for d in results.get("domains", []) if d != "all"]
        summary = []
        for domain in [ALL, *domains] if len(domains) > 1 else [ALL]:
            rows = domain_rows(results, domain)
            shown = table(rows)
            first_table = first_table or shown
            slug = "all" if domain == ALL else domain.replace("/", "-")
            plots = _plots(rows, output.parent / f"{output.stem}-{index}-{slug}.png", domain)
            parts.append(f"### {domain}\n\n{shown}\n")
            parts += [f"![{p}]({p})\n" for p in plots]
            summary += summary_lines(rows, domain)
        parts.append(
            "Ratios in brackets are to the student trained on the original traces. Train "
            "tokens: the realised training-token ratio (of that domain's traces); output "
            "tokens: the student's mean answer length on the held-out questions.\n"
        )
        parts.append("### Which cell keeps the most\n\n" + "\n".join(summary) + "\n")
        agreement = agreement_markdown(results)
        if agreement:
            parts.append(
                "### Criterion agreement\n\nMean Jaccard overlap of the steps each pair of "
                f"criteria keeps, per budget:\n\n{agreement}"
            )
            (Path(run_dir) / "agreement.md").write_text(agreement, encoding="utf-8")
        roles = role_table(run_dir, list(results["runs"]))
        if roles:
            parts.append(
                "What each compressed set did to the traces' step roles (share of the text "
                f"before -> after, `cd_fast.compress.roles`):\n\n{roles}\n"
            )
    output.write_text("\n".join(parts), encoding="utf-8")
    return first_table
