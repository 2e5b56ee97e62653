"""`cdfast demo`: the whole pipeline end to end on an embedded default (no network, no files)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cd_fast.config import in_range

NAME = "demo"
HELP = "run the whole pipeline on an embedded default and print the paper-style table"
DESCRIPTION = """Runs a small `cdfast sweep` on an embedded world: generates two verifiable
tasks with verbose teacher-style traces (restating, "Wait, let me double-check...", abandoned
paths): multi-step math word problems, and a general-domain task (the colour of the fruit a
person has, graded as text). Trains a BPE tokenizer and a student on the original traces (that
student also scores the traces), compresses them at each budget by token pruning (surprisal)
and step pruning (value flow) (and rewriting with --rewriter), trains a student on each
compressed set from the same initial weights with the same steps over the same traces per step
(so each step costs what its shorter traces cost), evaluates every student on held-out
questions and prints the table: asked budget, realised training-token ratio, the student's
output-length ratio, training time, accuracy and accuracy per 1k output tokens, each relative to
the original. report.md adds the same table per domain (does compression hurt the math task
more than the general one?), the plots, which cell keeps the most accuracy per token, and the
agreement of the step criteria (value flow, step roles, surprisal). Everything lands in
--output (data with --explain records, models, evals, sweep.json, report.md and the trade-off
plots); `cdfast report --html DIR` shows what each method kept. Truncation, other criteria and
levels: `cdfast sweep` on the demo's data/original.jsonl and data/eval.jsonl.

sizes: micro (a one-minute smoke test: numbers mean little), tiny (2 CPU cores, under 10
minutes: 8,000 training traces seen once, 300 held-out questions), small and base (a GPU).

examples:
  cdfast demo --size tiny
  cdfast demo --size small --budgets 0.1 0.3 0.5 -o demo-small
  cdfast demo --traces my_traces.jsonl -o demo-mine      # your traces (records with gold)
  cdfast demo --size tiny --resume      # after a stop signal (SIGTERM, Ctrl-C) ended it
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cd_fast.demo import SIZES
    from cd_fast.demo.pipeline import BUDGETS

    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="how large the generated world, the student and the runs are (tiny runs on a CPU)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("cdfast-demo"),
        help="folder for the data, the runs and report.md",
    )
    parser.add_argument("--traces", type=Path, help="use these traces instead of generated ones")
    parser.add_argument(
        "--budgets",
        type=in_range(float, above=0, maximum=1),
        nargs="+",
        default=list(BUDGETS),
        metavar="B",
        help="fractions of tokens kept; each method runs at each budget",
    )
    parser.add_argument("--rewriter", help="also rewrite (level 2) with this local instruct model")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated dataset")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a demo a stop signal ended (finished stages are kept; without it a rerun "
        "into the same folder starts over)",
    )


def run(args: argparse.Namespace) -> int:
    from cd_fast.demo import run_demo
    from cd_fast.sweep import SweepStopped

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_demo(
            args.output,
            args.size,
            args.traces,
            tuple(args.budgets),
            args.rewriter,
            args.device,
            args.seed,
            resume=args.resume,
        )
    except SweepStopped as stopped:
        print(
            f"cdfast demo: {stopped}: rerun the same command with --resume to continue "
            f"(-o {args.output})",
            file=sys.stderr,
        )
        return 128 + stopped.signum
    return 0
