"""`cdfast eval`: the student answers, each answer is graded by its record's grader, the papers'
metrics."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cd_fast.cli.common import (
    INPUT_HELP,
    add_input_arguments,
    open_input,
    output_folder,
    record_total,
    report_skips,
)
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.eval import EvalConfig, compare_table, evaluate
from cd_fast.eval.run import METRICS, PREDICTIONS, metrics_table
from cd_fast.generate import BackendConfig
from cd_fast.runtime import progress_bar

NAME = "eval"
HELP = "generate with the student, grade each answer, report accuracy and output length"
DESCRIPTION = f"""The student writes its full reasoning and answer for each question (greedy).
Backends (--backend): transformers (batched, KV cache, CPU or GPU), vllm (offline engine, when
installed; --tensor-parallel-size), http (any OpenAI-compatible server: --base-url, and --model
is the served name). Each response is graded by the record's `grader` field, or --grader: math
(the default; math-verify: \\boxed{{}}, "Answer:", "####", numbers with commas, fractions,
LaTeX), numeric, text (the gold or an `accept` alias), choice (one of the record's `options`) or
constraint (the record's `check` and `params`: word_count, json_keys, start_end, ...). Records of
the Qwen3-8B set in ../shared carry these fields; any record may (top level or meta).

RUN_DIR gets predictions.jsonl (graded responses; --resume continues a killed run) and
metrics.json: accuracy, mean/median output tokens, truncation rate, accuracy per 1k output
tokens, and with --baseline RUN the papers' ratios: accuracy retained, output-length reduction,
per-token efficiency gain, and the three budgets of compress-then-distil: the budget the
student's training traces were asked to keep and the token ratio they reached (read from the
`cdfast train` run the model folder came from and its data's `cdfast compress` summary), and the
student's output length against the baseline's (inference-length ratio). --compare RUN... prints
several runs side by side (the first is the baseline) without generating.

examples:
  cdfast eval ../shared/data/gsm8k/test.jsonl --model runs/original/final -o evals/original \\
      --limit 200 --max-new-tokens 1024
  cdfast eval ../shared/data/gsm8k/test.jsonl --model runs/step30/final -o evals/step30 \\
      --limit 200 --baseline evals/original
  cdfast eval ../shared/data/math500/test.jsonl --model Qwen/Qwen2.5-0.5B-Instruct \\
      -o evals/served --backend http --base-url http://127.0.0.1:8000/v1
  cdfast eval --compare evals/original evals/step30 evals/token30

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, required=False)
    parser.add_argument(
        "-o",
        "--output",
        type=output_folder,
        help="run folder: predictions.jsonl, metrics.json, run.json",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--baseline", type=Path, help="an earlier run folder to compare with")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="RUN", help="runs to tabulate")
    add_config_arguments(parser, EvalConfig, title="generation (EvalConfig)", required=())
    add_config_arguments(parser, BackendConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.compare:
        print(compare_table(args.compare))
        return 0
    missing = [f for f in ("input", "model", "output") if getattr(args, f) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --compare RUN...)")
    config = config_from_args(EvalConfig, args)
    read, reader = open_input(args, args.output, need_traces=False)
    with progress_bar("eval", record_total(reader, read.limit)) as bar:
        result = evaluate(
            reader,
            args.output,
            config,
            read,
            resume=args.resume,
            baseline=args.baseline,
            on_progress=bar.update,
            backend=config_from_args(BackendConfig, args),
        )
    report_skips(reader)
    print(metrics_table(result))
    print(f"output  {args.output} ({PREDICTIONS}, {METRICS})")
    return 0
