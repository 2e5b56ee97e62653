"""Fused token scoring (surprisal + entropy under the LM head): cd_fast's fused kernel (each tile
shape) and split method vs Liger's fused scaled cross entropy (SM90 CuTe kernel on an H100), the
eager reference (logits -> log_softmax) and torch.compile of it, next to the bare GEMM; plus
`cdfast score` end to end against the model's forward pass alone."""

from __future__ import annotations

import argparse
import functools
import itertools
import re
import time

import torch

from cd_fast.kernels.token_scores import DEFAULT_FUSED, FUSED_CONFIGS, token_scores

from .harness import environment, peak_memory_gib, peak_memory_reset, time_device, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1536, 4096])
    parser.add_argument("--vocab", type=int, nargs="+", default=[151936])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(FUSED_CONFIGS),
        choices=list(FUSED_CONFIGS),
        help="tile shapes of the fused kernel to time",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="also time the Scorer on a random Qwen2.5-1.5B-shaped model (GPU)",
    )


def eager_reference(hidden, weight, targets):
    """What users write: full logits, log_softmax, gather."""
    log_probs = torch.log_softmax((hidden @ weight.t()).float(), dim=-1)
    surprisal = -log_probs.gather(1, targets[:, None])[:, 0]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return surprisal, entropy


def liger_scaled_ce(hidden, weight, targets):
    """Liger's per-token NLL + entropy (its SM90 CuTe kernel on an H100, chunked torch else)."""
    from liger_kernel.ops.fused_linear_scaled_cross_entropy import (
        LigerFusedLinearScaledCrossEntropyFunction,
    )

    return LigerFusedLinearScaledCrossEntropyFunction.apply(
        hidden, weight, targets, return_entropy=True
    )


def _measure(fn, device) -> tuple[float | str, float | None]:
    """(median ms or the error, extra GiB at peak above what was allocated before)."""
    peak_memory_reset(device)
    before = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    try:
        with torch.no_grad():
            ms = time_device(fn, device, repeats=1)
    except torch.OutOfMemoryError:
        return "OOM", None
    except Exception as error:  # a provider that cannot run here: its row says why
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}", None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peak = peak_memory_gib(device)
    return ms, (peak - before) if peak is not None else None


def end_to_end(device, shape: str = "qwen2.5-1.5b", traces_count: int = 64) -> dict:
    from transformers import AutoModelForCausalLM

    from cd_fast.data import Trace
    from cd_fast.kernels import TokenStore
    from cd_fast.patches import register
    from cd_fast.score import Scorer
    from cd_fast.train import plan_steps

    from .harness import lognormal_lengths
    from .shapes import model_config

    config = model_config(shape, max_position_embeddings=32768)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(config, attn_implementation=register(), dtype=dtype)
    model = model.to(device).eval()

    class WordTokenizer:  # a stand-in: ids from words, offsets exact (no hub access)
        chat_template = None
        bos_token_id = eos_token_id = 0

        def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
            single = isinstance(texts, str)
            ids, offsets = [], []
            for text in [texts] if single else texts:
                words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
                ids.append([hash(text[a:b]) % 151000 + 1 for a, b in words])
                offsets.append(words)
            out = {"input_ids": ids[0] if single else ids}
            if return_offsets_mapping:
                out["offset_mapping"] = offsets
            return out

    lengths = lognormal_lengths(1500, count=traces_count, seed=1)
    traces = [
        Trace(id=str(i), question="q " * 20, trace=" ".join(["w"] * n))
        for i, n in enumerate(lengths)
    ]
    budget = 16384
    scorer = Scorer(model, WordTokenizer(), max_tokens_per_batch=budget)
    scorer.score(traces[:4])  # warm-up
    scorer.stats.input_tokens = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    scorer.score(traces)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic

    # The decoder's forward alone on the same tokens, packed under the same budget.
    tokenizer = WordTokenizer()
    sequences = [scorer.prompt_ids(t.question) + tokenizer(t.trace)["input_ids"] for t in traces]
    store = TokenStore(sequences, device=device)
    steps = plan_steps(store.lengths, budget, seed=0)
    with torch.inference_mode():
        model.model(**store.pack(steps[0]).model_kwargs())  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        for step in steps:
            model.model(**store.pack(step).model_kwargs())
        if device.type == "cuda":
            torch.cuda.synchronize()
    forward_seconds = time.perf_counter() - tic
    return {
        "tokens": scorer.stats.input_tokens,
        "seconds": seconds,
        "forward_tokens": int(store.lengths.sum()),
        "forward_seconds": forward_seconds,
    }


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = environment()
    compiled = torch.compile(eager_reference, dynamic=False)
    rows = []
    for tokens, hidden_size, vocab in itertools.product(args.tokens, args.hidden, args.vocab):
        hidden = torch.randn(tokens, hidden_size, device=device, dtype=dtype)
        weight = torch.randn(vocab, hidden_size, device=device, dtype=dtype) / hidden_size**0.5
        targets = torch.randint(0, vocab, (tokens,), device=device)
        gemm_ms, _ = _measure(lambda h=hidden, w=weight: h @ w.t(), device)
        providers = (
            {
                f"cd_fast fused {name}"
                + (" (default)" if name == DEFAULT_FUSED else ""): functools.partial(
                    token_scores,
                    hidden,
                    weight,
                    targets,
                    method="fused",
                    fused_config=FUSED_CONFIGS[name],
                )
                for name in args.configs
            }
            if device.type == "cuda"
            else {}
        )
        providers["cd_fast split"] = functools.partial(
            token_scores, hidden, weight, targets, method="split"
        )
        providers["liger scaled CE (entropy)"] = functools.partial(
            liger_scaled_ce, hidden, weight, targets
        )
        providers["eager"] = functools.partial(eager_reference, hidden, weight, targets)
        providers["torch.compile"] = functools.partial(compiled, hidden, weight, targets)
        measured = {name: _measure(fn, device) for name, fn in providers.items()}
        eager_ms, eager_gib = measured["eager"]
        for name, (ms, gib) in measured.items():
            ok = isinstance(ms, float)
            rows.append(
                {
                    **env,
                    "benchmark": "token_scores",
                    "device": str(device),
                    "tokens": tokens,
                    "hidden": hidden_size,
                    "vocab": vocab,
                    "provider": name,
                    "ms": round(ms, 3) if ok else ms,
                    "gemm_ms": round(gemm_ms, 3) if isinstance(gemm_ms, float) else gemm_ms,
                    "x_bare_gemm": round(ms / gemm_ms, 3)
                    if ok and isinstance(gemm_ms, float)
                    else "",
                    "speedup_vs_eager": round(eager_ms / ms, 2)
                    if ok and isinstance(eager_ms, float)
                    else "",
                    "extra_gib": round(gib, 3) if gib is not None else "",
                    "extra_vs_eager": round(gib / eager_gib, 4) if gib and eager_gib else "",
                }
            )
            print(rows[-1]["tokens"], hidden_size, vocab, name, rows[-1]["ms"], "ms")
        del hidden, weight, targets
    if args.end_to_end:
        e2e = end_to_end(device)
        rows.append(
            {
                **env,
                "benchmark": "score_end_to_end",
                "device": str(device),
                "provider": "Scorer, Qwen2.5-1.5B shape, random init",
                "tokens": e2e["tokens"],
                "ms": round(e2e["seconds"] * 1e3, 1),
                "tokens_per_s": round(e2e["tokens"] / e2e["seconds"]),
                "forward_tokens_per_s": round(e2e["forward_tokens"] / e2e["forward_seconds"]),
                "x_forward": round(
                    (e2e["seconds"] / e2e["tokens"])
                    / (e2e["forward_seconds"] / e2e["forward_tokens"]),
                    2,
                ),
            }
        )
    columns = [
        "tokens",
        "hidden",
        "vocab",
        "provider",
        "ms",
        "x_bare_gemm",
        "speedup_vs_eager",
        "extra_gib",
        "extra_vs_eager",
        "tokens_per_s",
        "forward_tokens_per_s",
        "x_forward",
    ]
    write_results(
        args.results_dir,
        "token_scores",
        rows,
        columns,
        "Token scoring: surprisal + entropy under the LM head",
        f"{env['date']}, commit {env['commit']}, device {device} (GPU: {env['gpu']}), torch "
        f"{env['torch']}, triton {env['triton']}; {dtype} inputs. x_bare_gemm = time / time of "
        "hidden @ weight.T alone (bf16 out); extra_gib = peak memory above the inputs. Score end "
        "to end: x_forward = the Scorer's time / the model's forward alone on the same batches.",
        "python -m bench token_scores --end-to-end",
    )
    return rows
