"""Options and helpers shared by the commands that read trace files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cd_fast.data import LAYOUTS, TraceReader, parse_fields

INPUT_HELP = """input layouts (detected on the first record, or --layout):
  trace             {"id","question","trace","answer","gold","meta"} (cd_fast's own records)
  messages          chat "messages"; <think>..</think> or reasoning_content in the reply
  reasoning         "thinking"/"reasoning_content" next to "content"/"response"
  think             "completion"/"response"/"output" holding <think>..</think>
  problem_solution  MATH-style "problem", "solution", "answer"
  gsm8k             "question" + "answer" ending in "#### <gold>"
"""


def add_input_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "input",
        type=Path,
        nargs=None if required else "?",
        help=".jsonl, .jsonl.gz, .json or .parquet traces",
    )
    group = parser.add_argument_group("reading input")
    group.add_argument("--layout", choices=LAYOUTS, default="auto", help="input record layout")
    group.add_argument(
        "--field",
        action="append",
        metavar="TARGET=SOURCE",
        help="map a record field explicitly, e.g. --field question=prompt --field trace=thinking "
        "(targets: id, question, trace, answer, gold, completion); repeatable",
    )
    group.add_argument(
        "--prompts",
        type=Path,
        help="prompts file to join onto the traces (e.g. items.json beside a traces JSONL)",
    )
    group.add_argument(
        "--join",
        metavar="TRACE_KEY=PROMPT_KEY",
        help="join key for --prompts (default: item_id/prompt_id/question_id/problem_id/id = id)",
    )
    group.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip malformed records (counted and listed by id) instead of stopping at the first",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_limit_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help=f"{verb} only the first N records"
    )


def add_job_arguments(parser: argparse.ArgumentParser, output_help: str, verb: str) -> None:
    """A resumable job over a trace file: input, -o OUTPUT, --resume, --limit."""
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help=output_help)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    add_limit_argument(parser, verb)


def open_reader(args: argparse.Namespace) -> TraceReader:
    return TraceReader(
        args.input,
        layout=args.layout,
        fields=parse_fields(args.field),
        prompts=args.prompts,
        join=args.join,
        skip_invalid=args.skip_invalid,
    )


def progress_bar(reader: TraceReader, desc: str) -> tqdm:
    return tqdm(
        total=reader.progress_total or None,
        unit=reader.progress_unit,
        unit_scale=reader.progress_unit == "B",
        desc=desc,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def report_skips(reader: TraceReader, limit: int = 20) -> None:
    if not reader.skipped:
        return
    print(f"skipped {len(reader.skipped)} invalid record(s):")
    for skip in reader.skipped[:limit]:
        print(f"  {reader.source.name}:{skip.location} id={skip.id or '?'}: {skip.reason}")
    if len(reader.skipped) > limit:
        ids = ", ".join(str(s.id or s.location) for s in reader.skipped[limit:])
        print(f"  ... and {len(reader.skipped) - limit} more: {ids}")
