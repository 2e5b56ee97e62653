"""`cdfast generate`: sample a teacher's reasoning traces for a file of questions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cd_fast.cli.common import (
    INPUT_HELP,
    add_job_arguments,
    open_input,
    record_total,
    report_skips,
)
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.generate import BackendConfig
from cd_fast.runtime import progress_bar
from cd_fast.teacher import GenerateConfig, generate_traces

NAME = "generate"
HELP = "sample a teacher's reasoning traces for questions (transformers, vLLM or a server)"
DESCRIPTION = f"""The first stage: a reasoning model (the teacher) answers each question --n times
and its traces become cd_fast records for `cdfast segment/score/compress/train`. Questions come
in any layout the readers know: GSM8K, MATH-style (problem/answer), prompts JSON/JSONL/Parquet
(question, prompt or problem, with an optional gold answer), or traces (their question is used).

Backends (--backend): transformers (local generate, batched, KV cache; CPU or GPU), vllm (the
offline engine; --tensor-parallel-size), http (any OpenAI-compatible server: vLLM, SGLang,
llama.cpp, `transformers serve`; --model is the served name, the key comes from the variable
--api-key-env names). The reasoning is the server's reasoning_content/reasoning field or the
text inside <think>..</think>; the reply after it is the record's answer.

Each sample with a gold answer is graded with math-verify; --keep all | correct |
shortest-correct chooses what becomes a record (rejection sampling). Sampling defaults follow
reasoning-model cards: temperature 0.6, top-p 0.95, up to 32768 new tokens.

Output: OUT (the records: question, trace, answer, gold, and meta.generation with the teacher,
sample, seed, settings, token counts, truncated and correct), OUT.summary.json (accuracy,
pass@n, truncation, tokens, output tokens/s) and OUT.samples.jsonl (every sample, graded, a line
per finished question). A killed run continues with --resume: finished questions are never
generated again, and a run under other settings is refused; --resume --keep ... on a finished
run keeps its samples differently without generating.

examples:
  cdfast generate ../shared/data/gsm8k/test.jsonl -o traces.jsonl --limit 200 \\
      --model Qwen/Qwen3-0.6B --max-new-tokens 4096
  vllm serve Qwen/Qwen3-8B --reasoning-parser qwen3 &
  cdfast generate questions.jsonl -o traces.jsonl --backend http --model Qwen/Qwen3-8B \\
      --base-url http://127.0.0.1:8000/v1 --concurrency 64 --n 4 --keep shortest-correct
  cdfast generate math.parquet -o traces.jsonl --backend vllm --model Qwen/Qwen3-8B \\
      --tensor-parallel-size 2 \\
      --template '{{question}} Please reason step by step, and put your answer in \\boxed{{}}.'

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "output .jsonl (the kept traces)", folder=False)
    add_config_arguments(parser, GenerateConfig, title="teacher (GenerateConfig)")
    add_config_arguments(parser, BackendConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(GenerateConfig, args)
    backend = config_from_args(BackendConfig, args)
    read, reader = open_input(args, args.output, need_traces=False)
    with progress_bar("generate", record_total(reader, read.limit), unit="question") as bar:
        tokens = 0

        def progress(questions: int, output_tokens: int) -> None:
            nonlocal tokens
            tokens += output_tokens
            bar.set_postfix_str(f"{tokens:,} output tokens", refresh=False)
            bar.update(questions)

        summary = generate_traces(
            reader, args.output, config, read, args.resume, backend, on_progress=progress
        )
    report_skips(reader)
    print_summary(summary, args.output)
    return 0


def print_summary(summary: dict, output: Path) -> None:
    accuracy = summary["accuracy"]
    pass_key = next(k for k in summary if k.startswith("pass_at_"))
    rows = [
        ("teacher", f"{summary['teacher']} ({summary['backend']})"),
        (
            "questions",
            f"{summary['questions']}, {summary['samples']} samples "
            f"({summary['questions_without_gold']} without a gold answer)",
        ),
        (
            "accuracy",
            "-"
            if accuracy is None
            else f"{accuracy:.4f} per sample; {pass_key.replace('pass_at_', 'pass@')} "
            f"{summary[pass_key]:.4f}",
        ),
        ("truncated", f"{summary['truncation_rate']:.1%}"),
        (
            "tokens",
            f"{summary['output_tokens']:,} out (mean {summary['mean_output_tokens']}), "
            f"{summary['prompt_tokens']:,} in",
        ),
        ("throughput", f"{summary['output_tokens_per_s']} output tokens/s"),
        ("kept", f"{summary['records_out']} records (--keep {summary['keep']})"),
        ("output", f"{output} (+ .summary.json, .samples.jsonl)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
