"""`cdfast compress`: prune, truncate or rewrite traces to a token budget."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from cd_fast.cli.common import (
    INPUT_HELP,
    add_job_arguments,
    open_input,
    record_total,
    report_skips,
)
from cd_fast.compress import CompressConfig, build_engine, compress_file
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.generate import BackendConfig
from cd_fast.runtime import progress_bar

NAME = "compress"
HELP = "compress traces: token/step pruning by importance, truncation, generative rewriting"
DESCRIPTION = f"""Compress each trace to a token budget, counted with the student's tokenizer.

methods (--method) and criteria (--criterion):
  token     keep whole words in priority order: the final answer, the numbers and operators
            of the value-flow chain, then the rest by surprisal | entropy | random (markdown
            decoration first to go; --no-protect: importance only); the count is bisected on
            the re-tokenised text so the student's-token ratio lands on the budget
  step      drop whole units (--granularity paragraph | sentence; a question stays with its
            answer) by value-flow (no model: the units whose numbers the answer depends on),
            surprisal | entropy (--aggregation sum | mean | max), answer-delta (the answer's
            loss increase without the unit, SPIRIT-style), random. The sentences stating the
            answer stay; order is kept. --compare-criteria prints the Jaccard overlap of the
            units each pair of criteria keeps at --compare-budgets instead
  truncate  keep the head of the trace; --match-lengths OTHER.jsonl gives each record the
            length of its counterpart in another method's output
  rewrite   an instruct model rewrites the trace: --level 1 deletes words only, 2 a concise
            rewrite keeping every step and number, 3 a few-word draft per step. Backends
            (--backend): transformers (local), http (an OpenAI-compatible server), vllm

Scores come from --scores DIR (the output of `cdfast score` on the same file) or are computed
with --scorer MODEL. When a compressed trace lost the original's final answer (\\boxed{{}},
"Answer:", "####" or the last number), --on-lost-answer expands it, keeps the original or
drops the record. Output: the records with `trace` compressed and meta.compression (asked and
reached tokens, the reason when a record misses its share; --explain adds the dropped spans with
scores and reasons, which `cdfast report --html` renders), plus OUT.summary.json; --resume
continues a killed run.

examples:
  cdfast compress traces.jsonl -o token30.jsonl --method token --budget 0.3 --scores scores/
  cdfast compress traces.jsonl -o step30.jsonl --method step --budget 0.3 --explain \\
      --tokenizer Qwen/Qwen2.5-0.5B-Instruct
  cdfast compress traces.jsonl -o agreement.md --method step --compare-criteria --scores scores/
  cdfast compress traces.jsonl -o step30.jsonl --method step --criterion answer-delta \\
      --budget 0.3 --scorer ~/.cache/cd_fast/models/SmolLM2-135M-Instruct.Q4_1.gguf
  cdfast compress traces.jsonl -o trunc.jsonl --method truncate --match-lengths step30.jsonl \\
      --tokenizer Qwen/Qwen2.5-0.5B-Instruct
  cdfast compress traces.jsonl -o l2.jsonl --method rewrite --level 2 --backend http \\
      --base-url http://127.0.0.1:8000/v1 --rewriter Qwen/Qwen2.5-7B-Instruct \\
      --tokenizer Qwen/Qwen2.5-0.5B-Instruct

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "output .jsonl (or the agreement table, .md)", folder=False)
    add_config_arguments(parser, CompressConfig)
    add_config_arguments(parser, BackendConfig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(CompressConfig, args)
    read, reader = open_input(args, args.output)
    if config.compare_criteria:
        return compare_criteria(config, reader, read, args.output)
    with progress_bar(f"compress ({args.method})", record_total(reader, read.limit)) as bar:
        summary = compress_file(
            reader,
            args.output,
            config,
            read,
            resume=args.resume,
            on_progress=lambda done: bar.update(done - bar.n),
            backend=config_from_args(BackendConfig, args),
        )
    report_skips(reader)
    print_summary(summary, args.output)
    return 0


def compare_criteria(config: CompressConfig, reader, read, output: Path) -> int:
    """--compare-criteria: the agreement table instead of compressed traces."""
    from cd_fast.compress.agreement import agreement_table, criteria_agreement
    from cd_fast.data.writer import AtomicWriter

    engine = build_engine(dataclasses.replace(config, method="step"))
    traces = [t for t in read.records(reader) if t.trace.strip()]
    rows = criteria_agreement(
        traces,
        engine.config,
        engine.counter,
        scorer=engine.scorer,
        scores=engine.scores,
        budgets=tuple(config.compare_budgets),
    )
    table = agreement_table(rows)
    report_skips(reader)
    title = (
        f"Jaccard overlap of the steps kept ({len(traces)} traces, {config.granularity} units, "
        f"{config.aggregation} aggregation)"
    )
    print(f"{title}\n\n{table}")
    with AtomicWriter(output) as handle:
        handle.write(f"# {title}\n\n{table}\n")
    return 0


def budget_line(summary: dict) -> str:
    """Asked against reached, and why records missed their share."""
    line = f"asked {summary['ratio_asked']:.3f}, reached {summary['ratio_tokens']:.3f}"
    if summary["records_missing_budget"]:
        reasons = "; ".join(f"{n}: {why}" for why, n in summary["budget_miss_reasons"].items())
        line += f"; {summary['records_missing_budget']} records off their share ({reasons})"
    return line


def role_line(roles: dict | None) -> str:
    """Each step role's share of the text before -> after, and the fraction of it kept."""
    if not roles:
        return "-"
    parts = []
    for role, share in roles.items():
        if not share["before"]:
            continue
        if share["kept"] is None:
            parts.append(f"{role} {share['before']:.0%}")
        else:
            parts.append(
                f"{role} {share['before']:.0%} -> {share['after']:.0%} (kept {share['kept']:.0%})"
            )
    return "; ".join(parts) + " (share of the text before -> after)"


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
        ("budget", budget_line(summary)),
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
        ("roles kept", role_line(summary.get("roles"))),
        ("throughput", f"{summary['traces_per_s']} traces/s, {summary['tokens_per_s']} tokens/s"),
        ("time (s)", ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())),
        ("output", f"{output} (+ {output.name}.summary.json)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
