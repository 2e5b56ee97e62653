"""`cdfast report --html`: compressed traces written with `--explain` as one static page, kept
text plain, dropped text struck through and coloured by its score (hover: score and reason),
each sentence underlined in the colour of its step role (`cd_fast.compress.roles`)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from cd_fast.compress.roles import ROLES
from cd_fast.data import Trace, TraceReader
from cd_fast.data.writer import AtomicWriter

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #111; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin: 1.6em 0 0.2em; }
.meta { color: #555; font-size: 0.9em; margin-bottom: 0.4em; }
.trace { white-space: pre-wrap; border: 1px solid #ddd; padding: 0.8em; border-radius: 4px; }
del { text-decoration: line-through; color: #333; }
.legend span { padding: 0 0.5em; margin-right: 0.3em; }
"""
ROLE_COLOURS = {
    "initialising": "#999999",
    "deduction": "#1a9850",
    "verification": "#4575b4",
    "backtracking": "#d73027",
    "uncertainty": "#fdae61",
    "exploration": "#9e60c0",
    "conclusion": "#000000",
}
STYLE += "".join(
    f".r-{role} {{ border-bottom: 2px solid {colour}; }}\n" for role, colour in ROLE_COLOURS.items()
)


def score_colour(score: float, low: float, high: float) -> str:
    """Pale yellow for the lowest score of a trace's dropped spans, red for the highest."""
    share = 0.0 if high <= low else (score - low) / (high - low)
    return f"hsl({round(55 - 55 * share)}, 95%, {round(85 - 20 * share)}%)"


def explained_records(path: Path, limit: int) -> list[Trace]:
    """The first `limit` records of a `cdfast compress --explain` output, or of each such output
    in a `cdfast demo` folder's data/; an error when none of them carries an explanation."""
    files = sorted((path / "data").glob("*.jsonl")) if path.is_dir() else [path]
    records = []
    for f in files:
        found = [
            t
            for t in TraceReader(f)
            if "explain" in t.meta.get("compression", {}) and "original_trace" in t.meta
        ]
        records += found[:limit]
    if not records:
        raise ValueError(
            f"{path}: no record with meta.compression.explain: compress with --explain first"
        )
    return records


def _with_roles(original: str, start: int, end: int, roles: list[list]) -> str:
    """original[start:end], escaped, each piece inside a role run underlined in its colour."""
    pieces, at = [], start
    for a, b, role in roles:
        a, b = max(a, start), min(b, end)
        if b <= a:
            continue
        pieces.append(html.escape(original[at:a]))
        text = html.escape(original[a:b])
        pieces.append(f'<span class="r-{role}" title="{role}">{text}</span>')
        at = b
    pieces.append(html.escape(original[at:end]))
    return "".join(pieces)


def _body(original: str, dropped: list[dict[str, Any]], roles: list[list]) -> str:
    """The original with each dropped span struck through, and role runs underlined."""
    scores = [d["score"] for d in dropped]
    low, high = (min(scores), max(scores)) if scores else (0.0, 0.0)
    pieces, at = [], 0
    for entry in sorted(dropped, key=lambda d: d["start"]):
        start, end = max(entry["start"], at), entry["end"]
        if end <= start:
            continue
        pieces.append(_with_roles(original, at, start, roles))
        tip = html.escape(f"score {entry['score']:g}: {entry['reason']}", quote=True)
        colour = score_colour(entry["score"], low, high)
        pieces.append(
            f'<del style="background:{colour}" title="{tip}">'
            f"{_with_roles(original, start, end, roles)}</del>"
        )
        at = end
    pieces.append(_with_roles(original, at, len(original), roles))
    return "".join(pieces)


def _role_line(info: dict[str, Any]) -> str:
    shares = info.get("roles")
    if not shares or not shares.get("after"):
        return ""
    parts = [
        f"{role} {shares['before'][role]:.0%} -> {shares['after'][role]:.0%}"
        for role in ROLES
        if shares["before"].get(role)
    ]
    return "; step roles (share of the text before -> after): " + ", ".join(parts)


def render_html(records: list[Trace], title: str) -> str:
    """One page: per record its settings, asked and reached budget, and the marked-up trace."""
    sections = []
    for record in records:
        info = record.meta["compression"]
        criterion = f" / {info['criterion']}" if info.get("criterion") else ""
        unit = f" / {info['granularity']}" if info.get("granularity") else ""
        reached = info.get("ratio_tokens")
        line = (
            f"{info['method']}{criterion}{unit}, budget {info.get('budget')}, "
            f"{info.get('tokens', '?')} of {info.get('asked_tokens', '?')} asked tokens "
            f"(ratio {reached}), {len(info['explain']['dropped'])} dropped spans, "
            f"action {info.get('action')}"
        )
        if info.get("budget_miss"):
            line += f"; budget missed: {info['budget_miss']}"
        line += _role_line(info)
        explain = info["explain"]
        sections.append(
            f"<h2>{html.escape(record.id)}</h2>\n<div class=meta>{html.escape(line)}</div>\n"
            f"<div class=trace>"
            f"{_body(record.meta['original_trace'], explain['dropped'], explain.get('roles', []))}"
            "</div>"
        )
    legend = (
        "<p class=legend>kept text is plain; dropped text is struck through, coloured by its "
        f'score: <span style="background:{score_colour(0, 0, 1)}">lowest</span>'
        f'<span style="background:{score_colour(1, 0, 1)}">highest</span> (hover for the '
        "score and the reason); each sentence is underlined in the colour of its step role: "
        + " ".join(f'<span class="r-{role}">{role}</span>' for role in ROLE_COLOURS)
        + "</p>"
    )
    return (
        f"<!doctype html>\n<html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{legend}\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_html(inputs: list[Path], output: Path, limit: int) -> int:
    """Render the first `limit` explained records of each input (of each compressed set in a
    demo folder) into `output`; returns how many were rendered."""
    records = [r for path in inputs for r in explained_records(path, limit)]
    names = ", ".join(p.name for p in inputs)
    with AtomicWriter(output) as handle:
        handle.write(render_html(records, f"cd_fast: what compression kept ({names})"))
    return len(records)
