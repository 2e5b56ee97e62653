"""`cdfast score`'s Scorer end to end on the real Qwen3-8B traces against the model's plain
transformers forward (full logits) on the same windows and batches: scored tokens/s, the
Scorer's time in the model (from each batch's decoder forward to the end of its LM-head
scoring) and the host time it leaves exposed, per 100k scored tokens; plus its host work (the
wall time of all host stages, in whichever thread, hidden or not) where the Scorer reports it.
Default model: a random 2-layer student (bench/shapes.py's tiny-qwen3) with SmolLM2's
tokenizer.

Before/after comparisons of two versions: run this file against each checkout in the same
session, from a folder that holds the other version's `cd_fast`, its `kernels/` copied inside
as `cd_fast/kernels` (an editable install maps `cd_fast.kernels` to its own checkout
otherwise), and this `bench` (Python puts the working folder first on the path):
`python -m bench score --label before`."""

from __future__ import annotations

import argparse
import csv
import time
from typing import Any

import torch

from .harness import append_csv, environment, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="scorer LM (default: a random tiny-qwen3 student)")
    parser.add_argument(
        "--tokenizer", help="the random student's tokenizer folder (default: SmolLM2's, fetched)"
    )
    parser.add_argument("--records", type=int, default=24, help="traces, sampled evenly")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median kept)")
    parser.add_argument("--label", default="", help="names this checkout in the rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch's CPU threads (0: its default). On a CPU, fewer threads than cores leaves "
        "the host work a core of its own, as a GPU machine does",
    )


class ModelClock:
    """Seconds the model works (synchronised on CUDA): from each batch's decoder forward to the
    end of its LM-head scoring (the rows' gather between them included), the model's share of a
    Scorer run."""

    def __init__(self, scorer: Any, device: torch.device):
        import cd_fast.score.scorer as scorer_module

        self.seconds = 0.0
        self.device = device
        self._started = 0.0
        scorer.model.base_model.register_forward_pre_hook(lambda *_: self._start())
        scores = scorer_module.token_scores

        def timed_scores(*args: Any, **kwargs: Any) -> Any:
            out = scores(*args, **kwargs)
            self._stop()
            return out

        scorer_module.token_scores = timed_scores  # a timer around the real kernel

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self) -> None:
        self._sync()
        self._started = time.perf_counter()

    def _stop(self) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._started


def load(args: argparse.Namespace) -> tuple[Any, Any, list]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cd_fast.data import TraceReader
    from cd_fast.models import fetch_smollm2, load_causal_lm

    from .shapes import model_config

    folder = args.data_dir / "qwen3-8b-thinking"
    every = list(TraceReader(folder / "qwen3-8b__think-on.jsonl", prompts=folder / "items.json"))
    stride = max(1, len(every) // args.records)
    traces = every[::stride][: args.records]  # an even sample: the file is by kind
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    if args.model:
        model, tokenizer = load_causal_lm(args.model, device=args.device, dtype=dtype)
        return model, tokenizer, traces
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        path = fetch_smollm2()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    torch.manual_seed(0)
    config = model_config("tiny-qwen3", vocab_size=len(tokenizer))
    model = AutoModelForCausalLM.from_config(config).to(args.device, dtype).eval()
    return model, tokenizer, traces


def plain_forward_seconds(model: Any, scorer: Any, traces: list, device: torch.device) -> float:
    """The model's forward with full logits over the same windows in the same packed batches
    (`model(**batch)`: what scoring with transformers alone costs), timed once."""
    from cd_fast.kernels import pack_sequences
    from cd_fast.runtime import token_batches

    ids = scorer.tokenizer([t.trace for t in traces], add_special_tokens=False)["input_ids"]
    windows = []
    for trace, trace_ids in zip(traces, ids, strict=True):
        prompt = scorer.prompt_ids(trace.question)
        windows += [list(map(int, w.input_ids)) for w in scorer._windows(0, prompt, trace_ids)]
    batches = [
        pack_sequences([windows[i] for i in b])
        for b in token_batches([len(w) for w in windows], scorer.tokens_per_batch)
    ]
    with torch.inference_mode():
        tic = time.perf_counter()
        for batch in batches:
            kwargs = batch.model_kwargs()
            kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
            model(**kwargs).logits.sum()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - tic


def run(args: argparse.Namespace) -> list[dict]:
    from cd_fast.score import Scorer

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, traces = load(args)
    scorer = Scorer(model, tokenizer)
    clock = ModelClock(scorer, device)
    scorer.score(traces[:2])  # warm-up
    plain_forward_seconds(model, scorer, traces[:2], device)
    runs = []
    for _ in range(args.repeats):
        clock.seconds = 0.0
        before = dict(vars(scorer.stats))
        tic = time.perf_counter()
        scorer.score(traces)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, model_seconds = time.perf_counter() - tic, clock.seconds
        stats = {k: v - before[k] for k, v in vars(scorer.stats).items()}
        plain = plain_forward_seconds(model, scorer, traces, device)
        runs.append((wall, model_seconds, stats, plain))
    wall, model_seconds, stats, plain = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    scored = stats["scored_tokens"]
    per_100k = 1e5 / scored * 1e3  # seconds -> ms per 100k scored tokens
    host_work = stats.get("host_seconds")
    row = {
        **environment(),
        "benchmark": "score",
        "label": args.label,
        "device": str(device),
        "model": args.model or "tiny-qwen3 (random, 2 layers)",
        "records": len(traces),
        "torch_threads": torch.get_num_threads(),
        "scored_tokens": scored,
        "input_tokens": stats["input_tokens"],
        "scorer_tok_s": round(scored / wall),
        "plain_forward_tok_s": round(scored / plain),
        "x_plain_forward": round(wall / plain, 3),
        "model_ms_per_100k": round(model_seconds * per_100k, 1),
        "exposed_host_ms_per_100k": round((wall - model_seconds) * per_100k, 1),
        "host_work_ms_per_100k": round(host_work * per_100k, 1) if host_work else "n/a",
    }
    columns = [
        "label",
        "commit",
        "device",
        "cpu",
        "gpu",
        "records",
        "torch_threads",
        "scored_tokens",
        "scorer_tok_s",
        "plain_forward_tok_s",
        "x_plain_forward",
        "model_ms_per_100k",
        "exposed_host_ms_per_100k",
        "host_work_ms_per_100k",
    ]
    name = "score-cpu" if device.type == "cpu" else "score"
    path = args.results_dir / f"{name}.csv"
    append_csv(path, [row])
    with path.open(newline="", encoding="utf-8") as file:
        every = list(csv.DictReader(file))  # the table shows each run so far (before/after)
    write_results(
        args.results_dir,
        name,
        every,
        columns,
        "Scorer end to end vs the plain forward",
        (__doc__ or "").split("\n\n")[0].replace("\n", " ")
        + " x_plain_forward: the Scorer's wall time over the plain forward's (< 1: faster).",
        "python -m bench score",
        append=False,
    )
    return [row]
