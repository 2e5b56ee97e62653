"""Packing a step's batch: the Triton kernel vs a Python/torch.cat collator vs the torch
reference, on lognormal trace lengths; plus the share of a training step (GPU)."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cd_fast.kernels import IGNORE_INDEX
from cd_fast.kernels.pack import TokenStore
from cd_fast.kernels.reference import pack_from_store_ref
from cd_fast.train.packing import StepPlanner

from .harness import environment, lognormal_lengths, time_device, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=4000, help="samples in the token store")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--means", type=int, nargs="+", default=[1500, 8000])
    parser.add_argument(
        "--step-model",
        action="store_true",
        help="also time fwd+bwd of a random Qwen2.5-0.5B-shaped model on the batch (GPU)",
    )


def collate_python(sequences: list[list[int]], prompts: list[int], device) -> tuple:
    """What a typical Python collator does: lists -> tensors -> torch.cat -> device."""
    ids, labels, positions, cu = [], [], [0], []
    for tokens, prompt in zip(sequences, prompts, strict=True):
        t = torch.tensor(tokens, dtype=torch.int64)
        label = t.clone()
        label[: max(prompt, 1)] = IGNORE_INDEX
        ids.append(t)
        labels.append(label)
        cu.append(torch.arange(len(tokens)))
        positions.append(positions[-1] + len(tokens))
    return (
        torch.cat(ids)[None].to(device),
        torch.cat(labels)[None].to(device),
        torch.cat(cu)[None].to(device),
        torch.tensor(positions, dtype=torch.int32).to(device),
    )


def step_time_ms(batch, device) -> float:
    from transformers import AutoModelForCausalLM

    from cd_fast.patches import register

    from .shapes import model_config

    config = model_config("qwen2.5-0.5b", max_position_embeddings=32768)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation=register(), dtype=torch.bfloat16
    ).to(device)

    def step():
        out = model(**batch.model_kwargs(), labels=batch.labels)
        out.loss.backward()

    return time_device(step, device)


def time_providers(store: TokenStore, step: list[int], sequences, prompts, device) -> dict:
    picked = [sequences[i] for i in step]
    picked_prompts = [prompts[i] for i in step]
    offsets, lengths = store.offsets[step], store.lengths[step]
    prompt_lengths = store.prompt_lengths[step]
    return {
        "triton": time_device(lambda: store.pack(step), device),
        "torch-reference": time_device(
            lambda: pack_from_store_ref(store.tokens, offsets, lengths, prompt_lengths), device
        ),
        "python-collator": time_device(
            lambda: collate_python(picked, picked_prompts, device), device
        ),
    }


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    env = environment()
    rows = []
    for mean in args.means:
        rng = np.random.default_rng(mean)
        lengths = lognormal_lengths(mean, count=args.samples, seed=mean)
        sequences = [rng.integers(0, 151936, size=n).tolist() for n in lengths]
        prompts = [int(rng.integers(16, 256)) for _ in lengths]
        store = TokenStore(sequences, prompts, device=device)
        for budget in args.tokens:
            step = max(StepPlanner(store.lengths, budget).epoch_plan(0), key=len)
            timings = time_providers(store, step, sequences, prompts, device)
            step_ms = step_time_ms(store.pack(step), device) if args.step_model else None
            for provider, ms in timings.items():
                rows.append(
                    {
                        **env,
                        "benchmark": "pack",
                        "device": str(device),
                        "provider": provider,
                        "mean_len": mean,
                        "sequences": len(step),
                        "tokens": int(store.lengths[step].sum()),
                        "ms": round(ms, 4),
                        "speedup_vs_collator": round(timings["python-collator"] / ms, 1),
                        "share_of_train_step": round(ms / step_ms, 5) if step_ms else "",
                    }
                )
    columns = [
        "provider",
        "mean_len",
        "sequences",
        "tokens",
        "ms",
        "speedup_vs_collator",
        "share_of_train_step",
    ]
    write_results(
        args.results_dir,
        "pack",
        rows,
        columns,
        "Packing a step's batch",
        f"{env['date']}, commit {env['commit']}, device {device} (GPU: {env['gpu']}, CPU: "
        f"{env['cpu']}), torch {env['torch']}, triton {env['triton']}.",
        "python -m bench pack --step-model",
    )
    return rows
