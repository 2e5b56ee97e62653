"""SFT throughput: cd_fast's Trainer vs TRL's SFTTrainer (../shared/tools anchors), same model
shapes, same random-init weights recipe, same lognormal lengths and tokens, same device.

Label tokens/s over the timed steps (after warm-up), MFU (formula in cd_fast/train/metrics.py),
peak memory and the memory model's estimate. TRL runs in a subprocess per setting when `trl` is
installed; its best setting is the ratio's denominator. `--epoch ORIGINAL COMPRESSED` also times
one epoch on original vs compressed traces with the same student.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .harness import environment, markdown_table, write_results

SHAPES = {
    "qwen2.5-0.5b": ("Qwen2Config", dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)),
    "qwen2.5-1.5b": ("Qwen2Config", dict(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True)),
    "qwen3-8b": ("Qwen3Config", dict(
        hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False)),
    "tiny": ("Qwen2Config", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=1000)),
}  # fmt: skip
# run name -> (shape, mode, mean length, TRL anchor script, its SIZE, its WHICH, its BS)
RUNS = {
    "0.5b-full-1500": ("qwen2.5-0.5b", "full", 1500, "trl_anchor.py", "0.5b",
                       "pad,pad_liger,bfd_liger,pf_liger", 4),
    "1.5b-full-1500": ("qwen2.5-1.5b", "full", 1500, "trl_anchor.py", "1.5b",
                       "pad,pad_liger,pf_liger", 4),
    "0.5b-full-300": ("qwen2.5-0.5b", "full", 300, "trl_anchor.py", "0.5b", "pad_liger", 16),
    "8b-qlora-1500": ("qwen3-8b", "qlora", 1500, "trl_qlora_anchor.py", "8b", "pad,pad_liger", 4),
    "tiny-full-300": ("tiny", "full", 300, "trl_anchor.py", "tiny", "pad", 4),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--runs", nargs="+", default=["0.5b-full-1500", "1.5b-full-1500", "0.5b-full-300",
                                      "8b-qlora-1500"], choices=list(RUNS),
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed first steps")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument(
        "--qlora-tokens-per-step", type=int, default=16384, help="the 8B QLoRA run's step"
    )
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the TRL anchors (needs trl + datasets)")  # fmt: skip
    parser.add_argument("--tools-dir", type=Path, default=Path("../shared/tools"))
    parser.add_argument(
        "--epoch", nargs=2, type=Path, metavar=("ORIGINAL", "COMPRESSED"),
        help="also time one epoch on each trace file (cd_fast records) with --epoch-model",
    )  # fmt: skip
    parser.add_argument("--epoch-model", help="student for --epoch (folder or hub id)")


def synthetic_lengths(mean: float, count: int, vocab: int) -> list[np.ndarray]:
    """The TRL anchors' data: lognormal(log mean, 0.7) lengths in [64, 4096], random tokens."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(math.log(mean), 0.7, count).astype(int), 64, 4096)
    return [rng.integers(10, vocab, n) for n in lengths]


def _our_run(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM

    from cd_fast.train import TrainConfig, Trainer, TrainSet

    shape, mode, mean, *_ = RUNS[name]
    config_class, options = SHAPES[shape]
    model_config = getattr(transformers, config_class)(**options)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    sequences = synthetic_lengths(mean, args.sequences, options["vocab_size"])
    ids = [str(i) for i in range(len(sequences))]
    data = TrainSet(ids, sequences, np.zeros(len(sequences), dtype=np.int64))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    qlora = mode == "qlora"
    if qlora:  # bitsandbytes quantises while loading: go through a saved copy
        path = workdir / shape
        model.save_pretrained(path)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = str(path)
    tokens = args.qlora_tokens_per_step if qlora else args.tokens_per_step
    config = TrainConfig(
        output_dir=str(workdir / f"run-{name}"), max_steps=args.steps, logging_steps=1,
        save_steps=0, max_tokens_per_step=tokens, max_seq_length=4096, learning_rate=1e-5,
        lr_scheduler_type="constant", export="none", device=args.device, bf16=bf16,
        lora_r=16 if qlora else 0, load_in_4bit=qlora, gradient_checkpointing=qlora,
        lora_alpha=32,
    )  # fmt: skip
    from cd_fast.train.memory import ModelShape, estimate_memory

    estimate = estimate_memory(
        ModelShape.from_config(model_config), config, device.type == "cuda", qlora, 1
    )
    trainer = Trainer(model, data, config, progress=False)
    trainer.train()
    rows = [
        json.loads(x)
        for x in (Path(config.output_dir) / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    timed = [r for r in rows if r["step"] > args.warmup]
    seconds = sum(r["label_tokens"] / r["tokens_per_s"] for r in timed)
    tokens_total = sum(r["label_tokens"] for r in timed)
    mfu = [r["mfu"] * r["label_tokens"] / r["tokens_per_s"] for r in timed if "mfu" in r]
    return {
        "provider": f"cd_fast ({mode}, {tokens} tok/step)",
        "label_tok_per_s": round(tokens_total / seconds, 1),
        "mfu": round(sum(mfu) / seconds, 4) if mfu else "",
        "peak_gib": max(r["peak_memory_gib"] for r in rows),
        "estimate_gib": round(estimate.total / 2**30, 2),
    }


def _trl_runs(name: str, args: argparse.Namespace) -> list[dict]:
    _, _, mean, script, size, which, batch = RUNS[name]
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{name}: TRL anchors skipped ({', '.join(missing)} not installed)")
        return []
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "SIZE": size, "MEANLEN": str(mean), "WHICH": which, "BS": str(batch),
               "STEPS": str(args.steps), "NSEQ": str(args.sequences), "OUT": out}  # fmt: skip
        done = subprocess.run(
            [sys.executable, str(args.tools_dir / script)], env=env, capture_output=True, text=True
        )
        results = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 and not results:
        print(f"{name}: TRL anchor failed: {done.stderr[-800:]}")
    rows = []
    for r in results:
        if "error" in r:
            print(f"{name}: TRL {r['name']} failed: {r['error']}")
            continue
        rows.append({"provider": f"trl {r['name']} (batch {batch})",
                     "label_tok_per_s": round(r["tok_per_s"], 1), "mfu": "",
                     "peak_gib": round(r["peak_gib"], 2), "estimate_gib": ""})  # fmt: skip
    return rows


def _epoch_rows(args: argparse.Namespace, workdir: Path) -> list[dict]:
    from cd_fast.train import TrainConfig, Trainer

    rows = []
    for label, path in zip(("original", "compressed"), args.epoch, strict=True):
        config = TrainConfig(
            output_dir=str(workdir / f"epoch-{label}"), num_train_epochs=1, logging_steps=10,
            save_steps=0, max_tokens_per_step=args.tokens_per_step, export="none",
            device=args.device, learning_rate=1e-5,
        )  # fmt: skip
        trainer = Trainer(args.epoch_model, path, config, progress=False)
        started = time.perf_counter()
        result = trainer.train()
        seconds = round(time.perf_counter() - started, 2)
        tokens = trainer.train_set.label_tokens
        rows.append({"traces": label, "file": str(path), "label_tokens": tokens,
                     "steps": result.step, "seconds": seconds})  # fmt: skip
    base = rows[0]["seconds"]
    for row in rows:
        row["speedup"] = round(base / row["seconds"], 2) if row["seconds"] else ""
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    env = environment()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            shape, mode, mean, *_ = RUNS[name]
            group = []
            ours = _our_run(name, args, Path(tmp))
            group.append(ours)
            print(f"{name}: cd_fast {ours['label_tok_per_s']:,.0f} label tok/s, "
                  f"MFU {ours['mfu']}, peak {ours['peak_gib']} GiB")  # fmt: skip
            if args.trl:
                group += _trl_runs(name, args)
            best_trl = max((r["label_tok_per_s"] for r in group[1:]), default=None)
            for row in group:
                row.update({**env, "benchmark": "train", "run": name, "shape": shape,
                            "mode": mode, "mean_len": mean, "device": args.device,
                            "vs_best_trl": round(row["label_tok_per_s"] / best_trl, 2)
                            if best_trl else ""})  # fmt: skip
            rows += group
        epoch = _epoch_rows(args, Path(tmp)) if args.epoch else []
    columns = ["run", "provider", "label_tok_per_s", "vs_best_trl", "mfu", "peak_gib",
               "estimate_gib"]  # fmt: skip
    extra = ""
    if epoch:
        extra = (
            "\n## One epoch, original vs compressed traces\n\n"
            + markdown_table(epoch, ["traces", "label_tokens", "steps", "seconds", "speedup"])
            + "\n"
        )
    write_results(
        args.results_dir, "train", rows, columns, "SFT throughput: cd_fast vs TRL",
        f"{env['date']}, commit {env['commit']}, device {args.device} (GPU: {env['gpu']}), torch "
        f"{env['torch']}. Random-init weights, lognormal lengths (sigma 0.7, 64..4096), "
        f"{args.steps} steps with {args.warmup} untimed. MFU = (6*N*sum(l) + 12*L*H*Q*sum(l^2)) "
        "/ time / peak bf16.",
        "python -m bench train",
        extra,
    )  # fmt: skip
    return rows
