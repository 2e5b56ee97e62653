"""Compression throughput per method on the real traces: the scorer's forward pass once, then
each method's selection + detokenisation, as traces/s, tokens/s and selection's share of the
time next to the scorer (target <= 10%); plus the ratio reached and the answers kept."""

from __future__ import annotations

import argparse
import time

import torch

from .harness import environment, write_results

PRUNING = [
    ("token", "surprisal"),
    ("token", "entropy"),
    ("token", "random"),
    ("step", "surprisal"),
    ("step", "entropy"),
    ("step", "random"),
    ("truncate", None),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scorer", help="scorer LM (default: SmolLM2-135M .gguf from PyPI)")
    parser.add_argument("--records", type=int, default=25, help="traces, sampled evenly (0 = all)")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument(
        "--answer-delta", action="store_true", help="also step pruning by answer-delta (slow)"
    )
    parser.add_argument("--rewriter", help="also rewrite (level 2) with this local model")


def run(args: argparse.Namespace) -> list[dict]:
    from cd_fast.compress import compress
    from cd_fast.data import TraceReader
    from cd_fast.models import fetch_smollm2, load_causal_lm
    from cd_fast.score import Scorer

    folder = args.data_dir / "qwen3-8b-thinking"
    reader = TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json")
    every = list(reader)
    stride = max(1, len(every) // args.records) if args.records else 1
    traces = every[::stride][: args.records or None]  # an even sample: the file is by kind
    model, tokenizer = load_causal_lm(args.scorer or fetch_smollm2(), device=args.device)
    scorer = Scorer(model, tokenizer)
    tokens = sum(len(ids) for ids in tokenizer([t.trace for t in traces])["input_ids"])
    tic = time.perf_counter()
    scores = {record.id: record for record in scorer.score(traces)}
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    scoring = time.perf_counter() - tic
    print(f"scored {len(traces)} traces, {tokens:,} tokens in {scoring:.1f} s")

    env = environment()
    rows = []
    methods = list(PRUNING) + ([("step", "answer-delta")] if args.answer_delta else [])
    for method, criterion in methods:
        options = {"criterion": criterion} if criterion else {}
        result = compress(traces, method, args.budget, scorer=scorer, scores=scores, **options)
        seconds = result.summary["seconds"]
        selection = seconds["selection"]
        model_time = seconds["scoring"] + (scoring if method != "truncate" else 0.0)
        total = model_time + selection
        rows.append(
            _row(
                env,
                args,
                method,
                criterion,
                result.summary,
                len(traces),
                tokens,
                model_time,
                selection,
                total,
            )
        )
    if args.rewriter:
        from cd_fast.generate import make_generator

        rewriter = make_generator(args.rewriter, device=args.device)
        result = compress(traces, "rewrite", args.budget, counter=tokenizer, rewriter=rewriter)
        seconds = result.summary["seconds"]
        total = seconds["generation"] + seconds["selection"]
        rows.append(
            _row(
                env,
                args,
                "rewrite",
                "level 2",
                result.summary,
                len(traces),
                tokens,
                seconds["generation"],
                seconds["selection"],
                total,
            )
        )
    columns = [
        "method",
        "criterion",
        "traces_per_s",
        "tokens_per_s",
        "model_s",
        "selection_s",
        "selection_share",
        "ratio_tokens",
        "answers_kept",
    ]
    write_results(
        args.results_dir,
        "compress",
        rows,
        columns,
        "Compression throughput",
        f"{env['date']}, commit {env['commit']}, device {args.device} (GPU: {env['gpu']}), "
        f"{len(traces)} real Qwen3-8B traces ({tokens:,} tokens), budget {args.budget}, scorer "
        f"{args.scorer or 'SmolLM2-135M'}. model_s: the scorer's forward passes (one scoring "
        "pass shared by the pruning methods; truncation needs none); selection_s: selection + "
        "detokenisation + counting; selection_share = selection_s / (model_s + selection_s).",
        "python -m bench compress",
    )
    return rows


def _row(env, args, method, criterion, summary, count, tokens, model_time, selection, total):
    return {
        **env,
        "benchmark": "compress",
        "device": args.device,
        "method": method,
        "criterion": criterion or "",
        "records": count,
        "tokens": tokens,
        "traces_per_s": round(count / total, 2) if total else "",
        "tokens_per_s": round(tokens / total, 1) if total else "",
        "model_s": round(model_time, 3),
        "selection_s": round(selection, 3),
        "selection_share": round(selection / total, 4) if total else "",
        "ratio_tokens": summary["ratio_tokens"],
        "answers_kept": f"{summary['answers_kept']}/{summary['answers_in_original']}",
    }
