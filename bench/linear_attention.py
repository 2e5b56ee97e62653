"""The Gated-DeltaNet token mixers of a hybrid student (Qwen3.5-0.8B's shape), forward+backward
over packed rows: cd_fast's varlen causal conv1d vs flash-linear-attention's and the torch paths,
and the gated delta rule packed (fla with cu_seqlens) vs per sequence and vs padded rows."""

from __future__ import annotations

import importlib
import itertools

import torch
import torch.nn.functional as F

from cd_fast.kernels import causal_conv1d_varlen
from cd_fast.kernels.reference import causal_conv1d_varlen_ref

from .harness import lognormal_lengths, time_forward_backward

# Qwen3.5-0.8B's Gated-DeltaNet: 16 key and 16 value heads of 128, conv over q, k and v, width 4
SHAPE = {"heads": 16, "key_dim": 128, "value_dim": 128, "width": 4}
SHAPE_NAME = "qwen3.5-0.8b (16/16x128, conv 6144x4)"


def _fla(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # not installed, or no GPU runtime for its kernels
        return None


def _padded(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """[T, ...] packed -> [B, max_len, ...] zero-padded rows (the unpacked batch)."""
    rows = x.new_zeros(len(lengths), max(lengths), *x.shape[1:])
    for row, (start, n) in enumerate(
        zip(itertools.accumulate([0, *lengths]), lengths, strict=False)
    ):
        rows[row, :n] = x[start : start + n]
    return rows.requires_grad_()


def conv_providers(lengths: list[int], device: torch.device, dtype: torch.dtype) -> dict:
    channels = SHAPE["heads"] * (2 * SHAPE["key_dim"] + SHAPE["value_dim"])
    total = sum(lengths)
    x = torch.randn(total, channels, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(channels, SHAPE["width"], device=device, dtype=dtype, requires_grad=True)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    providers = {
        "cd_fast causal_conv1d_varlen (packed)": lambda: causal_conv1d_varlen(
            x, weight, None, cu, "silu"
        ),
        "torch reference (per sequence)": lambda: causal_conv1d_varlen_ref(
            x, weight, None, cu, "silu"
        ),
    }
    fla_conv = _fla("fla.modules.causal_conv1d", "causal_conv1d") or _fla(
        "fla.modules.convolution", "causal_conv1d"
    )
    if fla_conv is not None and device.type == "cuda":
        providers["fla causal_conv1d (packed)"] = lambda: fla_conv(
            x[None], weight, None, activation="silu", cu_seqlens=cu.long()
        )[0]
    rows = _padded(x.detach(), lengths).transpose(1, 2)  # [B, D, L]
    width = SHAPE["width"]
    providers["F.conv1d on padded rows (unpacked)"] = lambda: F.silu(
        F.conv1d(rows, weight[:, None], padding=width - 1, groups=channels)[..., : rows.shape[-1]]
    )
    return providers


def delta_rule_providers(lengths: list[int], device: torch.device, dtype: torch.dtype) -> dict:
    from transformers.models.qwen3_5 import modeling_qwen3_5

    heads, key_dim, value_dim = SHAPE["heads"], SHAPE["key_dim"], SHAPE["value_dim"]
    total = sum(lengths)

    def leaf(*shape, scale=1.0):
        return (torch.randn(1, total, *shape, device=device) * scale).to(dtype).requires_grad_()

    q, k = leaf(heads, key_dim), leaf(heads, key_dim)
    v = leaf(heads, value_dim)
    g = (-torch.rand(1, total, heads, device=device) * 0.1).requires_grad_()  # log decay <= 0
    beta = torch.rand(1, total, heads, device=device).to(dtype).requires_grad_()
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64, device=device)
    options = {"use_qk_l2norm_in_kernel": True}
    torch_rule = getattr(
        modeling_qwen3_5.torch_chunk_gated_delta_rule,
        "cd_fast_original",
        modeling_qwen3_5.torch_chunk_gated_delta_rule,
    )
    torch_rule = getattr(torch_rule, "__wrapped__", torch_rule)
    providers = {}
    fla_rule = _fla("fla.ops.gated_delta_rule", "chunk_gated_delta_rule")
    if fla_rule is not None and device.type == "cuda":
        providers["fla chunk (packed, cu_seqlens)"] = lambda: fla_rule(
            q, k, v, g=g, beta=beta, cu_seqlens=cu, **options
        )[0]
        padded = [_padded(t.detach()[0], lengths) for t in (q, k, v, g, beta)]
        providers["fla chunk on padded rows (unpacked)"] = lambda: fla_rule(
            *padded[:3], g=padded[3], beta=padded[4], **options
        )[0]
    if total <= 16384:  # a Python loop over sequences and chunks: minutes at 32k tokens
        bounds = list(itertools.pairwise(cu.tolist()))
        providers["transformers torch rule (per sequence)"] = lambda: torch.cat(
            [
                torch_rule(
                    q[:, s:e], k[:, s:e], v[:, s:e], g=g[:, s:e], beta=beta[:, s:e], **options
                )[0]
                for s, e in bounds
            ],
            dim=1,
        )
    return providers


def run(args, env: dict) -> list[dict]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for mean in args.means:
        budget = args.tokens or (16384 if mean < 5000 else 32768)
        lengths = lognormal_lengths(mean, budget, seed=0)
        total = sum(lengths)
        channels = SHAPE["heads"] * (2 * SHAPE["key_dim"] + SHAPE["value_dim"])
        # conv fwd+bwd moves x, y, dy, dx once each (the minimum), 2 bytes each in bf16
        conv_bytes = 4 * total * channels * torch.finfo(dtype).bits // 8
        for mixer, make in (("conv", conv_providers), ("delta_rule", delta_rule_providers)):
            if mixer not in args.mixers:
                continue
            for name, forward in make(lengths, device, dtype).items():
                timed = time_forward_backward(forward, device, f"{mixer} mean {mean}: {name}")
                if timed is None:
                    continue
                ms, memory = timed
                rows.append(
                    {
                        **env,
                        "benchmark": "linear_attention",
                        "device": str(device),
                        "shape": SHAPE_NAME,
                        "mixer": mixer,
                        "mean_len": mean,
                        "tokens": total,
                        "sequences": len(lengths),
                        "provider": name,
                        "ms": round(ms, 3),
                        "gb_per_s": round(conv_bytes / ms / 1e6, 1) if mixer == "conv" else "",
                        "peak_gib": round(memory, 2) if memory is not None else "",
                    }
                )
                print(f"{mixer} mean {mean}: {name} {ms:.2f} ms")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
