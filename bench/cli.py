"""Argument parsing and dispatch for `python -m bench` and `cdfast bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import (
    attention,
    compress,
    generate,
    loss,
    pack,
    plot,
    roles,
    score,
    segment,
    token_scores,
    train,
)

BENCHMARKS = {
    "segment": segment,
    "pack": pack,
    "attention": attention,
    "token_scores": token_scores,
    "loss": loss,
    "score": score,
    "compress": compress,
    "generate": generate,
    "roles": roles,
    "train": train,
    "plot": plot,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("bench/results"),
        help="where CSV/markdown/PNG results go",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="the shared/data folder with the real traces",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        sub = benchmarks.add_parser(name, help=(module.__doc__ or "").split("\n")[0])
        module.add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    BENCHMARKS[args.benchmark].run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
