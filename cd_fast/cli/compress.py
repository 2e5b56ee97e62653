"""`cdfast compress`: prune, truncate or rewrite traces to a token budget."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cd_fast.cli.common import (
    INPUT_HELP,
    add_input_arguments,
    open_reader,
    progress_bar,
    report_skips,
)
from cd_fast.compress import CompressConfig, build_engine, compress_file
from cd_fast.compress.config import (
    BACKENDS,
    LOST_ANSWER_POLICIES,
    METHODS,
    STEP_CRITERIA,
    TOKEN_CRITERIA,
)

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
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .jsonl")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--limit", type=int, help="compress only the first N records")
    knobs = parser.add_argument_group("what to keep")
    knobs.add_argument("--method", required=True, choices=METHODS)
    knobs.add_argument(
        "--criterion", choices=sorted(set(STEP_CRITERIA) | set(TOKEN_CRITERIA)),
        help="importance criterion (token/step; default surprisal)",
    )  # fmt: skip
    knobs.add_argument(
        "--budget", type=float, default=0.3, help="fraction of each trace's tokens to keep"
    )
    knobs.add_argument("--target-tokens", type=int, help="tokens per trace instead of --budget")
    knobs.add_argument(
        "--adaptive", action="store_true",
        help="more budget to harder traces (longer, higher surprisal), same overall ratio",
    )  # fmt: skip
    knobs.add_argument(
        "--protect", action=argparse.BooleanOptionalAction, default=True,
        help="token pruning keeps numbers, operators, math and the answer",
    )  # fmt: skip
    knobs.add_argument("--on-lost-answer", choices=LOST_ANSWER_POLICIES, default="expand")
    knobs.add_argument(
        "--keep-original", action="store_true", help="store the original in meta.original_trace"
    )
    knobs.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    knobs.add_argument(
        "--match-lengths", type=Path, help="truncate: per-record lengths of another output"
    )
    models = parser.add_argument_group("models")
    models.add_argument("--scores", type=Path, help="folder written by `cdfast score`")
    models.add_argument("--scorer", help="scorer LM (folder, hub id or .gguf)")
    models.add_argument(
        "--tokenizer", help="the student's tokenizer, which counts tokens (default: scorer's)"
    )
    models.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    models.add_argument(
        "--batch-size", type=int, default=64,
        help="records scored, budgeted and written together (the unit of resume)",
    )  # fmt: skip
    models.add_argument(
        "--generation-batch-size", type=int, default=8, help="rewrite, local: sequences per batch"
    )
    rewrite = parser.add_argument_group("rewriting (--method rewrite)")
    rewrite.add_argument("--level", type=int, choices=(1, 2, 3), default=2)
    rewrite.add_argument("--prompt", type=Path, help="prompt template file overriding the level's")
    rewrite.add_argument("--backend", choices=BACKENDS, default="local")
    rewrite.add_argument("--rewriter", help="instruct model (served model name for http)")
    rewrite.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    rewrite.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY)")
    rewrite.add_argument("--concurrency", type=int, default=8, help="http requests in flight")
    rewrite.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    rewrite.add_argument("--retries", type=int, default=4, help="retries, exponential backoff")
    rewrite.add_argument("--max-new-tokens", type=int, help="generation cap per trace")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be > 0, got {args.limit}")
    config = CompressConfig(
        method=args.method, budget=args.budget, target_tokens=args.target_tokens,
        scores=str(args.scores) if args.scores else None, scorer=args.scorer,
        tokenizer=args.tokenizer, device=args.device, criterion=args.criterion,
        adaptive=args.adaptive, protect=args.protect, on_lost_answer=args.on_lost_answer,
        keep_original=args.keep_original, seed=args.seed, level=args.level,
        prompt=str(args.prompt) if args.prompt else None, backend=args.backend,
        rewriter=args.rewriter, base_url=args.base_url, api_key=args.api_key,
        concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        generation_batch_size=args.generation_batch_size,
        match_lengths=str(args.match_lengths) if args.match_lengths else None,
    )  # fmt: skip
    engine = build_engine(config)
    reader = open_reader(args)
    bar = progress_bar(reader, f"compress ({args.method})")

    def on_progress(_: int) -> None:
        bar.n = reader.progress
        bar.refresh()

    try:
        summary = compress_file(
            reader, args.output, config, engine, resume=args.resume, limit=args.limit,
            on_progress=on_progress,
        )  # fmt: skip
    finally:
        bar.close()
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
        ("records", f"{summary['records']} in, {summary['records_out']} out "
                    f"({summary['records_dropped']} dropped)"),
        ("tokens", f"{summary['tokens_before']:,} -> {summary['tokens_after']:,}"),
        ("ratio (tokens)", f"{summary['ratio_tokens']:.3f} overall; per trace mean "
                           f"{summary['ratio_mean']:.3f}, p10 {summary['ratio_p10']:.3f}, "
                           f"p50 {summary['ratio_p50']:.3f}, p90 {summary['ratio_p90']:.3f}"),
        ("ratio (chars)", f"{summary['ratio_chars']:.3f}"),
        ("answers kept", f"{kept}/{answers} ({summary['records_expanded']} expanded, "
                         f"{summary['records_original']} kept original)" if answers else "-"),
        ("throughput", f"{summary['traces_per_s']} traces/s, {summary['tokens_per_s']} tokens/s"),
        ("time (s)", ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())),
        ("output", f"{output} (+ {output.name}.summary.json)"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
