"""The fused LM-head training loss, forward + backward (both gradients): cd_fast's kernel at a
few chunk budgets against Liger's fused linear cross entropy at chunk_mem_const 1 (its default:
128-256-row chunks at a Qwen vocabulary) and 16, and the eager reference (full logits); time,
peak memory and the error of the loss against the float64 reference on a slice."""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
import torch.nn.functional as F

from cd_fast.kernels import linear_cross_entropy

from .harness import environment, time_forward_backward, write_results

BUDGETS_MIB = (256, 1024, 4096)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384])
    parser.add_argument("--hidden", type=int, nargs="+", default=[896, 1536])
    parser.add_argument("--vocab", type=int, nargs="+", default=[151936])
    parser.add_argument("--budgets-mib", type=int, nargs="+", default=list(BUDGETS_MIB))


def eager(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum")


def liger(chunk_mem_const: int, hidden, weight, targets) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        hidden, weight, targets, reduction="sum", chunk_mem_const=chunk_mem_const
    )


def providers(budgets: list[int], device: torch.device) -> dict:
    chosen = {
        f"cd_fast {mib} MiB" + (" (default)" if mib == 1024 else ""): functools.partial(
            linear_cross_entropy, max_chunk_bytes=mib << 20
        )
        for mib in budgets
    }
    if device.type == "cuda":
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            print("liger-kernel is not installed: its rows are skipped")
        else:
            chosen["liger chunk 1 (default)"] = functools.partial(liger, 1)
            chosen["liger chunk 16"] = functools.partial(liger, 16)
    chosen["eager (full logits)"] = eager
    return chosen


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = environment()
    rows = []
    for tokens, size, vocab in itertools.product(args.tokens, args.hidden, args.vocab):
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(tokens, size, generator=generator).to(device, dtype)
        weight = (torch.randn(vocab, size, generator=generator) / size**0.5).to(device, dtype)
        targets = torch.randint(0, vocab, (tokens,), generator=generator).to(device)
        targets[::9] = -100
        hidden.requires_grad_()
        weight.requires_grad_()
        sample = slice(0, min(tokens, 512))
        reference = F.cross_entropy(
            hidden[sample].detach().double() @ weight.detach().double().t(),
            targets[sample],
            reduction="sum",
        )
        for name, loss in providers(args.budgets_mib, device).items():

            def step(loss=loss, inputs=(hidden, weight, targets)):
                inputs[0].grad = inputs[1].grad = None
                return loss(*inputs)

            measured = time_forward_backward(step, device, name)
            with torch.no_grad():
                value = loss(hidden[sample], weight, targets[sample]).double()
            error = float((value - reference).abs() / reference.abs())
            ms, gib = measured if measured else ("OOM", None)
            rows.append(
                {
                    **env,
                    "benchmark": "loss",
                    "device": str(device),
                    "dtype": str(dtype).removeprefix("torch."),
                    "tokens": tokens,
                    "hidden": size,
                    "vocab": vocab,
                    "provider": name,
                    "ms": round(ms, 2) if isinstance(ms, float) else ms,
                    "peak_gib": round(gib, 2) if gib is not None else "n/a",
                    "loss_rel_error": f"{error:.1e}",
                }
            )
    name = "loss" if device.type == "cuda" else "loss-cpu"
    columns = ["gpu", "cpu", "dtype", "tokens", "hidden", "vocab", "provider", "ms", "peak_gib"]
    write_results(
        args.results_dir,
        name,
        rows,
        [*columns, "loss_rel_error"],
        "Fused LM-head loss: forward + backward",
        (__doc__ or "").replace("\n", " "),
        f"python -m bench loss --device {device.type} --tokens {' '.join(map(str, args.tokens))} "
        f"--hidden {' '.join(map(str, args.hidden))} --vocab {' '.join(map(str, args.vocab))} "
        f"--budgets-mib {' '.join(map(str, args.budgets_mib))}",
    )
    return rows
