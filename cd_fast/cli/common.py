"""Options and helpers shared by the commands that read trace files."""

from __future__ import annotations

import argparse
from pathlib import Path

from cd_fast.config import at_least
from cd_fast.data import LAYOUTS, TraceReader, parse_fields
from cd_fast.runs import run_manifest

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


def add_limit_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--limit", type=at_least(int, 1), metavar="N", help=f"{verb} only the first N records"
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


def reader_options(args: argparse.Namespace) -> dict[str, object]:
    """The reading options a run manifest records (they decide which records a run sees)."""
    return {
        "layout": args.layout,
        "field": args.field,
        "join": args.join,
        "skip_invalid": args.skip_invalid,
    }


def record_total(reader: TraceReader, limit: int | None) -> int | None:
    """How many records the run will read, when cheap to know (the progress bar's total)."""
    known = reader.count_hint()
    if limit is None:
        return known
    return limit if known is None else min(limit, known)


def job_manifest(
    command: str,
    args: argparse.Namespace,
    inputs: dict[str, Path | str | None] | None = None,
    options: dict[str, object] | None = None,
) -> dict[str, object]:
    """A job's run manifest (its input files, reading options, --limit and `options`), once the
    output is known not to be one of the inputs."""
    check_output_paths(args.output, args.input, args.prompts)
    return run_manifest(
        command,
        {"input": args.input, "prompts": args.prompts, **(inputs or {})},
        {**reader_options(args), "limit": args.limit, **(options or {})},
    )


def check_output_paths(output: Path, *inputs: Path | None) -> None:
    """Refuse an output that is one of the inputs (it would be replaced before it was read)."""
    for path in inputs:
        if path is not None and output.exists() and path.exists() and output.samefile(path):
            raise ValueError(
                f"{output}: the output is also an input ({path}): write to another path"
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
