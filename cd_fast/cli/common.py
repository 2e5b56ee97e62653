"""Options and helpers shared by the commands that read trace files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.data import ReadConfig, TraceReader

INPUT_HELP = """input layouts (detected on the first record, or --layout):
  trace             {"id","question","trace","answer","gold","meta"} (cd_fast's own records)
  messages          chat "messages"; <think>..</think> or reasoning_content in the reply
  reasoning         "thinking"/"reasoning_content" next to "content"/"response"
  think             "completion"/"response"/"output" holding <think>..</think>
  problem_solution  MATH-style "problem", "solution", "answer"
  gsm8k             "question" + "answer" ending in "#### <gold>"
  questions         a question ("question"/"prompt"/"problem"/...) and an optional gold
                    ("answer"/"gold"/...), no trace: read by generate and eval
"""


def add_input_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The input file and the reading options (ReadConfig)."""
    parser.add_argument(
        "input",
        type=Path,
        nargs=None if required else "?",
        help=".jsonl, .jsonl.gz, .json or .parquet traces",
    )
    add_config_arguments(parser, ReadConfig)


def output_file(text: str) -> Path:
    """argparse type of an output that is a file: a name ending in / or an existing folder is
    refused (it would become a file named like the folder)."""
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a folder: this command writes a file; name one (e.g. {text.rstrip('/')}"
            "/out.jsonl)"
        )
    return Path(text)


def output_folder(text: str) -> Path:
    """argparse type of an output that is a folder: an existing file is refused."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file: this command writes a folder; choose another path"
        )
    return Path(text)


def add_job_arguments(parser: argparse.ArgumentParser, output_help: str, folder: bool) -> None:
    """A resumable job over a trace file: input and reading options, -o OUTPUT, --resume."""
    add_input_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        type=output_folder if folder else output_file,
        required=True,
        help=output_help,
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")


def open_input(
    args: argparse.Namespace, output: Path, need_traces: bool = True
) -> tuple[ReadConfig, TraceReader]:
    """The reading options the flags give and the input opened with them, once `output` is
    known not to be one of the input files (`need_traces` False: bare questions read too)."""
    read = config_from_args(ReadConfig, args)
    check_output_paths(output, args.input, read.prompts)
    return read, read.open(args.input, need_traces)


def record_total(reader: TraceReader, limit: int | None) -> int | None:
    """How many records the run will read, when cheap to know (the progress bar's total)."""
    known = reader.count_hint()
    if limit is None:
        return known
    return limit if known is None else min(limit, known)


def check_output_paths(output: Path, *inputs: str | Path | None) -> None:
    """Refuse an output that is one of the inputs (it would be replaced before it was read)."""
    for path in map(Path, filter(None, inputs)):
        if output.exists() and path.exists() and output.samefile(path):
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
