"""`cdfast compress`: prune, truncate or rewrite traces to a token budget."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cd_fast.cli.common import (
    INPUT_HELP,
    add_job_arguments,
    job_manifest,
    open_reader,
    record_total,
    report_skips,
)
from cd_fast.compress import CompressConfig, build_engine, compress_file
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.runtime import progress_bar
from cd_fast.score.store import MANIFEST

NAME = "compress"
HELP = "compress traces: token/step pruning by importance, truncation, generative rewriting"
DESCRIPTION = f"""Compress each trace to a token budget, counted with the student's tokenizer.

methods (--method) and criteria (--criterion):
  token     keep the most important tokens: surprisal (LLMLingua-style self-information),
            entropy, random; numbers, operators, LaTeX math and the final answer are protected
            (--no-protect to switch off); text is rebuilt from character spans, no fused words
  step      drop the least important reasoning steps (C++ segmenter): surprisal (mean step
            surprisal), entropy (summed step entropy), answer-delta (how much the answer's loss
            under the scorer rises without the step, SPIRIT-style), random. The first step and
            the steps stating the answer stay; order is kept
  truncate  keep the head of the trace; --match-lengths OTHER.jsonl gives each record the
            length of its counterpart in another method's output
  rewrite   an instruct model rewrites the trace: --level 1 deletes words only, 2 a concise
            rewrite keeping every step and number, 3 a few-word draft per step. Backends:
            local (transformers), http (OpenAI-compatible server), vllm (offline engine)

Scores come from --scores DIR (the output of `cdfast score` on the same file) or are computed
with --scorer MODEL. When a compressed trace lost the original's final answer (\\boxed{{}},
"Answer:", "####" or the last number), --on-lost-answer expands it, keeps the original or
drops the record. Output: the records with `trace` compressed and meta.compression, plus
OUT.summary.json; --resume continues a killed run.

examples:
  cdfast compress traces.jsonl -o token30.jsonl --method token --budget 0.3 --scores scores/
  cdfast compress traces.jsonl -o step30.jsonl --method step --criterion answer-delta \\
      --budget 0.3 --scorer ~/.cache/cd_fast/models/SmolLM2-135M-Instruct.Q4_1.gguf
  cdfast compress traces.jsonl -o trunc.jsonl --method truncate --match-lengths step30.jsonl \\
      --tokenizer Qwen/Qwen2.5-0.5B-Instruct
  cdfast compress traces.jsonl -o l2.jsonl --method rewrite --level 2 --backend http \\
      --base-url http://127.0.0.1:8000/v1 --rewriter Qwen/Qwen2.5-7B-Instruct \\
      --tokenizer Qwen/Qwen2.5-0.5B-Instruct

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "output .jsonl", "compress")
    add_config_arguments(parser, CompressConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(CompressConfig, args)
    reader = open_reader(args)
    manifest = job_manifest(
        "compress",
        args,
        {
            "scores": Path(config.scores) / MANIFEST if config.scores else None,
            "match_lengths": config.match_lengths,
            "prompt": config.prompt,
        },
        config.result_options(),
    )
    engine = build_engine(config)
    with progress_bar(f"compress ({args.method})", record_total(reader, args.limit)) as bar:
        summary = compress_file(
            reader,
            args.output,
            config,
            engine,
            resume=args.resume,
            limit=args.limit,
            on_progress=lambda done: bar.update(done - bar.n),
            manifest=manifest,
        )
    report_skips(reader)
    print_summary(summary, args.output)
    return 0


def print_summary(summary: dict, output: Path) -> None:
    answers = summary["answers_in_original"]
    kept = summary["answers_kept"]
    method = summary["method"]
    if summary["criterion"]:
        method += f" ({summary['criterion']})"
    elif summary["level"]:
        method += f" (level {summary['level']})"
    rows = [
        ("method", method),
        (
            "records",
            f"{summary['records']} in, {summary['records_out']} out "
            f"({summary['records_dropped']} dropped)",
        ),
        ("tokens", f"{summary['tokens_before']:,} -> {summary['tokens_after']:,}"),
        (
            "ratio (tokens)",
            f"{summary['ratio_tokens']:.3f} overall; per trace mean "
            f"{summary['ratio_mean']:.3f}, p10 {summary['ratio_p10']:.3f}, "
            f"p50 {summary['ratio_p50']:.3f}, p90 {summary['ratio_p90']:.3f}",
        ),
        ("ratio (chars)", f"{summary['ratio_chars']:.3f}"),
        (
            "answers kept",
            f"{kept}/{answers} ({summary['records_expanded']} expanded, "
            f"{summary['records_original']} kept original)"
            if answers
            else "-",
        ),
        (
            "empty traces",
            f"{summary['records_empty']} passed through unchanged (not in the ratios)"
            if summary.get("records_empty")
            else "-",
        ),
        ("throughput", f"{summary['traces_per_s']} traces/s, {summary['tokens_per_s']} tokens/s"),
        ("time (s)", ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())),
        ("output", f"{output} (+ {output.name}.summary.json)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
