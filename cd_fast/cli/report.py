"""`cdfast report`: a markdown report with plots from saved demo runs."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "markdown report (trade-off plot, training-time bars) from demo run folders"
DESCRIPTION = """Reads each RUN_DIR's demo.json and writes a markdown report: per run the table of
training tokens, training time, accuracy, output tokens and accuracy per 1k tokens (relative to
the student trained on the original traces), the accuracy-vs-output-tokens trade-off plot and
the training-time bars (PNG files beside the report).

examples:
  cdfast report cdfast-demo
  cdfast report demo-tiny demo-small -o reports/compare.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="demo output folders (each holds demo.json)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("report.md"), help="the markdown report to write"
    )


def run(args: argparse.Namespace) -> int:
    from cd_fast.demo import write_report

    print(write_report(args.runs, args.output))
    print(f"\nwrote {args.output}")
    return 0
