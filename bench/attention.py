"""Causal varlen attention forward+backward: each dispatcher backend vs padded SDPA and SDPA
with a block-diagonal mask (what transformers does for packed rows without flash-attn); and the
Gated-DeltaNet mixers of hybrid students (bench/linear_attention.py)."""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
import torch.nn.functional as F

from cd_fast.patches.attention import available_backends, varlen_attention

from . import linear_attention
from .harness import environment, lognormal_lengths, time_forward_backward, write_results

SHAPES = {"qwen2.5-1.5b": (12, 2, 128), "qwen3-8b": (32, 8, 128)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--means", type=int, nargs="+", default=[1500, 8000])
    parser.add_argument(
        "--mixers",
        nargs="+",
        default=["softmax", "conv", "delta_rule"],
        choices=["softmax", "conv", "delta_rule"],
        help="softmax attention (--shapes), and the causal conv1d and gated delta rule of "
        "Qwen3.5-0.8B's Gated-DeltaNet layers (results in linear_attention.csv)",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="tokens per step (default 16k at mean < 5000, else 32k)",
    )


def _padded(q, k, lengths, mask: bool):
    """SDPA on zero-padded rows: with a boolean mask (correct), or is_causal alone (ignores the
    padding: a lower bound, not a correct run)."""
    device, dtype = q.device, q.dtype
    heads, kv_heads, dim, longest = q.shape[1], k.shape[1], q.shape[2], max(lengths)
    rows_q = torch.zeros(len(lengths), heads, longest, dim, device=device, dtype=dtype)
    rows_k = torch.zeros(len(lengths), kv_heads, longest, dim, device=device, dtype=dtype)
    keep = torch.zeros(len(lengths), longest, dtype=torch.bool, device=device)
    start = 0
    for row, n in enumerate(lengths):
        rows_q[row, :, :n] = q[start : start + n].transpose(0, 1).detach()
        rows_k[row, :, :n] = k[start : start + n].transpose(0, 1).detach()
        keep[row, :n] = True
        start += n
    rows_q.requires_grad_()
    rows_k.requires_grad_()
    causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    attn_mask = (causal & keep[:, None, None, :]) if mask else None
    return lambda: F.scaled_dot_product_attention(
        rows_q, rows_k, rows_k, attn_mask=attn_mask, is_causal=not mask, enable_gqa=True
    )


def _block_diagonal(q, k, lengths):
    """SDPA over the packed row with a dense [T, T] block-diagonal causal mask."""
    device, total = q.device, q.shape[0]
    segment = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    position = torch.arange(total, device=device)
    mask = (segment[:, None] == segment[None, :]) & (position[:, None] >= position[None])
    qb = q.detach().transpose(0, 1)[None].requires_grad_()
    kb = k.detach().transpose(0, 1)[None].requires_grad_()
    return lambda: F.scaled_dot_product_attention(
        qb, kb, kb, attn_mask=mask[None, None], enable_gqa=True
    )


def _providers(q, k, v, lengths) -> dict:
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=q.device)
    providers = {
        f"varlen-{backend}": functools.partial(
            varlen_attention, q, k, v, cu, max(lengths), backend=backend
        )
        for backend in available_backends(q.device)
    }
    providers["sdpa-padded-is_causal (lower bound)"] = _padded(q, k, lengths, mask=False)
    providers["sdpa-padded-mask"] = _padded(q, k, lengths, mask=True)
    providers["sdpa-block-diagonal-mask"] = _block_diagonal(q, k, lengths)
    return providers


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = environment()
    rows = []
    for shape in args.shapes if "softmax" in args.mixers else []:
        heads, kv_heads, dim = SHAPES[shape]
        for mean in args.means:
            budget = args.tokens or (16384 if mean < 5000 else 32768)
            lengths = lognormal_lengths(mean, budget, seed=0)
            total = sum(lengths)
            q = torch.randn(total, heads, dim, device=device, dtype=dtype, requires_grad=True)
            k = torch.randn(total, kv_heads, dim, device=device, dtype=dtype, requires_grad=True)
            v = torch.randn(total, kv_heads, dim, device=device, dtype=dtype, requires_grad=True)
            # causal fwd (2 matmuls, half the scores) + bwd (2.5x fwd): the anchors' formula
            flops = 2 * sum(n * n for n in lengths) * heads * dim * 3.5
            for name, forward in _providers(q, k, v, lengths).items():
                timed = time_forward_backward(forward, device, f"{shape} mean {mean}: {name}")
                if timed is None:
                    continue
                ms, memory = timed
                rows.append(
                    {
                        **env,
                        "benchmark": "attention",
                        "device": str(device),
                        "shape": f"{shape} ({heads}/{kv_heads}x{dim})",
                        "mean_len": mean,
                        "tokens": total,
                        "sequences": len(lengths),
                        "provider": name,
                        "ms": round(ms, 3),
                        "tflops": round(flops / ms / 1e9, 2),
                        "peak_gib": round(memory, 2) if memory is not None else "",
                    }
                )
                print(f"{shape} mean {mean}: {name} {ms:.2f} ms, {flops / ms / 1e9:.1f} TFLOP/s")
    linear = linear_attention.run(args, env)
    if linear:
        write_results(
            args.results_dir,
            "linear_attention",
            linear,
            ["mixer", "mean_len", "tokens", "provider", "ms", "gb_per_s", "peak_gib"],
            "Gated-DeltaNet mixers over packed rows, forward + backward",
            f"{env['date']}, commit {env['commit']}, device {device} (GPU: {env['gpu']}), torch "
            f"{env['torch']}. Shape {linear_attention.SHAPE_NAME}. conv GB/s counts x, y, dy and "
            "dx once each (the least any kernel moves).",
            "python -m bench attention --mixers conv delta_rule",
        )
    if not rows:
        return linear
    write_results(
        args.results_dir,
        "attention",
        rows,
        ["shape", "mean_len", "tokens", "provider", "ms", "tflops", "peak_gib"],
        "Causal varlen attention, forward + backward",
        f"{env['date']}, commit {env['commit']}, device {device} (GPU: {env['gpu']}), torch "
        f"{env['torch']}. TFLOP/s = 2 * sum(len^2) * heads * dim * 3.5 / time.",
        "python -m bench attention",
    )
    return rows + linear
