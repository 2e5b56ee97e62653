"""`cdfast segment`: add reasoning-step offsets to every record."""

from __future__ import annotations

import argparse
import time

from cd_fast.cli.common import (
    INPUT_HELP,
    add_input_arguments,
    open_input,
    output_file,
    record_total,
    report_skips,
)
from cd_fast.config import add_config_arguments, at_least, config_from_args
from cd_fast.data import AtomicWriter, Trace, dumps_record
from cd_fast.runtime import batched, progress_bar
from cd_fast.segment import SegmentConfig, segment_steps

NAME = "segment"
HELP = "split traces into reasoning steps (C++, multi-threaded)"
DESCRIPTION = f"""Split each trace into reasoning steps and write the records with a `steps` field:
[start, end) character offsets into `trace` that cover it exactly. Boundaries: paragraph and
line breaks, sentence ends, discourse markers ("Wait", "Hmm", "Let me check", ...); never inside
LaTeX math, numbers, abbreviations or code fences; short fragments merge into a neighbour.

examples:
  cdfast segment traces.jsonl -o traces.steps.jsonl
  cdfast segment ../shared/data/qwen3-8b-thinking/qwen3-8b__think-on.jsonl \\
      --prompts ../shared/data/qwen3-8b-thinking/items.json -o qwen3.steps.jsonl
  cdfast segment raw.jsonl --field question=prompt --field trace=cot -o out.jsonl --skip-invalid

{INPUT_HELP}"""

BATCH_CHARS = 4 << 20
BATCH_RECORDS = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", type=output_file, required=True, help="output .jsonl")
    parser.add_argument(
        "--threads",
        type=at_least(int, 0),
        default=0,
        help="segmenter threads (0 = every available CPU)",
    )
    add_config_arguments(parser, SegmentConfig, title="segmentation rules (SegmentConfig)")


def _chars(trace: Trace) -> int:
    return len(trace.trace)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(SegmentConfig, args)
    read, reader = open_input(args, args.output)
    steps_total = text_bytes = 0
    segment_seconds = 0.0
    started = time.perf_counter()

    bar = progress_bar("segment", record_total(reader, read.limit))
    with AtomicWriter(args.output) as out, bar:
        records = read.records(reader)
        for batch in batched(records, BATCH_RECORDS, cost=_chars, max_cost=BATCH_CHARS):
            texts = [trace.trace for trace in batch]
            tic = time.perf_counter()
            offsets = segment_steps(texts, args.threads, config=config)
            segment_seconds += time.perf_counter() - tic
            for trace, steps in zip(batch, offsets, strict=True):
                trace.steps = steps.tolist()
                steps_total += len(steps)
                out.write(dumps_record(trace))
                out.write("\n")
            text_bytes += sum(len(text.encode("utf-8")) for text in texts)
            bar.update(reader.records_read - bar.n)

    wall = time.perf_counter() - started
    records = reader.records
    print(
        f"segmented {records} records from {args.input} ({reader.layout} layout) -> {args.output}"
    )
    print(f"  steps: {steps_total} ({steps_total / max(records, 1):.1f} per record)")
    megabytes = text_bytes / 1e6
    print(
        f"  trace text: {megabytes:.2f} MB; segmenter {megabytes / max(segment_seconds, 1e-9):.1f} "
        f"MB/s, end to end {megabytes / max(wall, 1e-9):.1f} MB/s ({wall:.2f} s)"
    )
    report_skips(reader)
    return 0
