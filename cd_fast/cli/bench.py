"""`cdfast bench`: the benchmark harness (same as `python -m bench` from a checkout)."""

from __future__ import annotations

import argparse

from cd_fast.bench.cli import add_arguments as _add_bench_arguments
from cd_fast.bench.cli import run as _run_bench

NAME = "bench"
HELP = "run benchmarks and append results to bench/results/"
DESCRIPTION = """Run a benchmark: providers side by side in one process, results appended to
CSV under --results-dir with the machine, versions, commit and date, plus a markdown summary.

examples:
  cdfast bench segment                      # C++ vs Python segmenter on >= 100 MB of real traces
  cdfast bench segment --target-mb 20 --threads 1 2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_bench_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _run_bench(args)
