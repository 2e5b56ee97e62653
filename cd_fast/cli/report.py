"""`cdfast report`: a markdown report with plots from saved sweeps and demo runs, or (--html) a
page that shows what compression kept and dropped."""

from __future__ import annotations

import argparse
from pathlib import Path

from cd_fast.config import at_least

NAME = "report"
HELP = "markdown report from sweeps and demo runs; --html: the kept and dropped text of traces"
DESCRIPTION = """Reads each RUN_DIR's sweep.json (`cdfast sweep` and `cdfast demo` write it) and
writes a markdown report: per run and per domain the table of asked budget, realised
training-token ratio, the student's output-length ratio, training time, accuracy and accuracy
per 1k output tokens (relative to the student trained on the original traces), the plots of
accuracy against training tokens and against output tokens, one curve per cell family (PNG files
beside the report), the summary of which cell keeps the most accuracy per token, and the
criterion agreement.

With --html, each input is a `cdfast compress --explain` output (or a demo folder, whose
compressed sets are explained): a static page renders the first --traces records of each, kept
text plain and dropped text struck through, coloured by its score; hovering shows the score and
the criterion's reason.

examples:
  cdfast report cdfast-demo
  cdfast report demo-tiny demo-small -o reports/compare.md
  cdfast compress traces.jsonl -o step30.jsonl --method step --budget 0.3 --explain \\
      --tokenizer Qwen/Qwen2.5-0.5B-Instruct
  cdfast report --html step30.jsonl -o step30.html
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="sweep or demo folders (each holds sweep.json); with --html also compressed .jsonl",
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="render explained compressed traces as an HTML page instead",
    )
    parser.add_argument(
        "--traces",
        type=at_least(int, 1),
        default=20,
        help="--html: records rendered per input",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the report to write (default: report.md, or report.html with --html)",
    )


def run(args: argparse.Namespace) -> int:
    if args.html:
        from cd_fast.compress.html import write_html

        output = args.output or Path("report.html")
        count = write_html(args.runs, output, args.traces)
        print(f"wrote {output} ({count} traces)")
        return 0
    from cd_fast.sweep import write_report

    output = args.output or Path("report.md")
    print(write_report(args.runs, output))
    print(f"\nwrote {output}")
    return 0
