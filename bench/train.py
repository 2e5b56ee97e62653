"""SFT throughput: cd_fast's Trainer vs TRL's SFTTrainer (../shared/tools anchors), same model
shapes, same random-init weights recipe, same lognormal lengths and tokens, same device.

Label tokens/s over the timed steps (after warm-up), MFU (formula in cd_fast/train/metrics.py),
peak memory and the memory model's estimate. TRL runs in a subprocess when `trl` is installed
(by default only the setting that was fastest in ../shared/tools/README.md; `--trl-settings all`
runs every one); its best row is the ratio's denominator. `--profile` writes a torch.profiler
summary of two of cd_fast's steps per run. `--epoch ORIGINAL COMPRESSED` also times one epoch on
original vs compressed traces with the same student.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .harness import append_csv, environment, markdown_table, write_results
from .shapes import SHAPES, model_config

# run name -> (shape, mode, mean length, TRL anchor script, its SIZE, its WHICH (all settings,
# best first: the fastest in ../shared/tools/README.md), its BS); no script: no TRL anchor
# (TRL cannot pack a hybrid model without flash-linear-attention and a compiled causal-conv1d).
RUNS = {
    "0.5b-full-1500": (
        "qwen2.5-0.5b",
        "full",
        1500,
        "trl_anchor.py",
        "0.5b",
        "pad_liger,pad,bfd_liger,pf_liger",
        4,
    ),
    "1.5b-full-1500": (
        "qwen2.5-1.5b",
        "full",
        1500,
        "trl_anchor.py",
        "1.5b",
        "pad_liger,pad,pf_liger",
        4,
    ),
    "0.5b-full-300": ("qwen2.5-0.5b", "full", 300, "trl_anchor.py", "0.5b", "pad_liger", 16),
    "8b-qlora-1500": ("qwen3-8b", "qlora", 1500, "trl_qlora_anchor.py", "8b", "pad,pad_liger", 4),
    "1.5b-qlora-1500": ("qwen2.5-1.5b", "qlora", 1500, None, "", "", 0),
    "tiny-full-300": ("tiny", "full", 300, "trl_anchor.py", "tiny", "pad", 4),
    "qwen3.5-0.8b-full-1500": ("qwen3.5-0.8b", "full", 1500, None, "", "", 0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=["0.5b-full-1500", "1.5b-full-1500", "8b-qlora-1500"],
        choices=list(RUNS),
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["bf16", "master"],
        choices=list(VARIANTS),
        help="cd_fast settings per full fine-tune run: bf16 = pure bf16 AdamW (what TRL's bf16 "
        "runs do), master = fp32 master weights (cd_fast's default), compile = bf16 + "
        "torch.compile of each block, liger-loss = bf16 with Liger's fused loss instead of "
        "cd_fast's, dynamic = bf16 without static shapes, graphs = bf16 replayed as CUDA graphs",
    )
    parser.add_argument(
        "--trl-settings",
        choices=("best", "all"),
        default="best",
        help="TRL settings to rerun: the fastest one of the README's table, or all of them",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write a torch.profiler summary of two cd_fast steps per run",
    )
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed first steps")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument(
        "--qlora-tokens-per-step", type=int, default=16384, help="the 8B QLoRA run's step"
    )
    parser.add_argument("--sequences", type=int, default=2000)
    parser.add_argument(
        "--trl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the TRL anchors (needs trl + datasets)",
    )
    parser.add_argument("--tools-dir", type=Path, default=Path("../shared/tools"))
    parser.add_argument(
        "--epoch",
        nargs=2,
        type=Path,
        metavar=("ORIGINAL", "COMPRESSED"),
        help="also time one epoch on each trace file (cd_fast records) with --epoch-model",
    )
    parser.add_argument(
        "--epoch-model",
        help="student for --epoch: a model folder or hub id, or a folder holding only a "
        "tokenizer (then a random-init --epoch-shape student with that vocabulary is built)",
    )
    parser.add_argument("--epoch-shape", default="qwen2.5-0.5b", choices=list(SHAPES))
    parser.add_argument(
        "--distributed",
        choices=("ddp", "fsdp"),
        default="fsdp",
        help="under torchrun (several GPUs): how the ranks share cd_fast's runs (rank 0 writes "
        "the results; tokens/s is of all ranks together)",
    )


VARIANTS = {
    "bf16": {"master_weights": False},
    "master": {"master_weights": True},
    "compile": {"master_weights": False, "compile": True},
    "liger-loss": {"master_weights": False, "loss_backend": "liger"},
    "dynamic": {"master_weights": False, "static_shapes": False},
    "graphs": {"master_weights": False, "cuda_graphs": True},
}


def scratch_dir() -> str | None:
    """A RAM-backed folder for the saved 8B copies when it has room (saving 16 GB to disk takes
    minutes), else the default temp folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30:
        return str(shm)
    return None


def save_random_model(model, path: Path) -> None:
    """Weights plus a word-level tokenizer (the synthetic data is token ids already; loading by
    path still wants a tokenizer)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(path)
    tokenizer = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<unk>"
    ).save_pretrained(path)


def synthetic_lengths(mean: float, count: int, vocab: int) -> list[np.ndarray]:
    """The TRL anchors' data: lognormal(log mean, 0.7) lengths in [64, 4096], random tokens."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(math.log(mean), 0.7, count).astype(int), 64, 4096)
    return [rng.integers(10, vocab, n) for n in lengths]


def _our_run(name: str, variant: str, args: argparse.Namespace, workdir: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from cd_fast.runtime import rank_info
    from cd_fast.train import TrainConfig, Trainer, TrainSet
    from cd_fast.train.metrics import peak_flops

    shape, mode, mean, *_ = RUNS[name]
    options = SHAPES[shape][1]
    architecture = model_config(shape)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    sequences = synthetic_lengths(mean, args.sequences, options["vocab_size"])
    ids = [str(i) for i in range(len(sequences))]
    data = TrainSet(ids, sequences, np.zeros(len(sequences), dtype=np.int64))
    world = rank_info().world_size
    torch.manual_seed(0)
    with torch.device(device if world == 1 else "cpu"):  # each rank takes its device (or shard)
        model = AutoModelForCausalLM.from_config(architecture, dtype=dtype)
    qlora = mode == "qlora"
    label = "qlora" if qlora else variant
    if world > 1:
        label += f", {args.distributed} x{world}"
    if qlora:  # bitsandbytes quantises while loading: go through a saved copy
        path = workdir / shape
        save_random_model(model, path)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = str(path)
    tokens = args.qlora_tokens_per_step if qlora else args.tokens_per_step
    config = TrainConfig(
        output_dir=str(workdir / f"run-{name}"),
        overwrite_output_dir=True,  # a scratch folder the next variant reuses
        max_steps=args.steps,
        logging_steps=max(1, args.warmup),  # a metrics row (a host sync) per window, not per step
        save_steps=0,
        max_tokens_per_step=tokens,
        max_seq_length=4096,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        export="none",
        device=args.device,
        bf16=bf16,
        lora_r=16 if qlora else 0,
        load_in_4bit=qlora,
        gradient_checkpointing=qlora,
        lora_alpha=32,
        distributed="ddp" if qlora else args.distributed,
        **({} if qlora else VARIANTS[variant]),
    )
    from cd_fast.train.memory import ModelShape, estimate_memory

    shape_of_model = ModelShape.from_config(architecture)
    sharded = world > 1 and config.distributed == "fsdp"
    on_cuda = device.type == "cuda"
    estimate = estimate_memory(shape_of_model, config, on_cuda, qlora, 1, world, sharded)
    trainer = Trainer(model, data, config, progress=False)
    result = trainer.train()
    if args.profile:
        _profile(trainer, args.results_dir / f"train-profile-{name}-{label}.txt")
    peak = peak_flops(trainer.device)
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timed = [t for t in result.timings if t.first_step > args.warmup]
    seconds = sum(t.seconds for t in timed)
    tokens_total = sum(t.label_tokens for t in timed)
    return {
        "provider": f"cd_fast ({label}, {tokens} tok/step)",
        "label_tok_per_s": round(tokens_total / seconds, 1),
        "mfu": round(sum(t.flops for t in timed) / seconds / (peak * world), 4) if peak else "",
        "peak_gib": max(t.peak_memory_gib for t in result.timings),
        "estimate_gib": round(estimate.total / 2**30, 2),
    }


def _profile(trainer, path: Path) -> None:
    """Two more steps under torch.profiler: the top kernels by total time, to a text file."""
    from torch.profiler import ProfilerActivity, profile

    trainer.total_steps = trainer.step + 2  # train() goes on from where it stopped
    on_cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        trainer.train()
        if on_cuda:
            torch.cuda.synchronize()
    sort = "cuda_time_total" if on_cuda else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40), encoding="utf-8")
    print(f"profile: {path}")


def _json_line(line: str) -> dict | None:
    """The anchors print one JSON object per setting among the trainers' own logs."""
    if not line.startswith('{"'):
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _trl_runs(name: str, args: argparse.Namespace) -> list[dict]:
    _, _, mean, script, size, which, batch = RUNS[name]
    if script is None:
        print(f"{name}: no TRL anchor for this shape")
        return []
    if args.trl_settings == "best":
        which = which.split(",")[0]
    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{name}: TRL anchors skipped ({', '.join(missing)} not installed)")
        return []
    with tempfile.TemporaryDirectory() as out:
        env = {
            **os.environ,
            "SIZE": size,
            "MEANLEN": str(mean),
            "WHICH": which,
            "BS": str(batch),
            "STEPS": str(args.steps),
            "NSEQ": str(args.sequences),
            "OUT": out,
        }
        scratch = scratch_dir()
        if scratch:
            env["TMPDIR"] = scratch  # the QLoRA anchor saves its 16 GB model there
        done = subprocess.run(
            [sys.executable, str(args.tools_dir / script)], env=env, capture_output=True, text=True
        )
        results = [r for r in map(_json_line, done.stdout.splitlines()) if r is not None]
    if done.returncode != 0 and not results:
        print(f"{name}: TRL anchor failed: {done.stderr[-800:]}")
    rows = []
    for r in results:
        if "error" in r:
            print(f"{name}: TRL {r['name']} failed: {r['error']}")
            continue
        rows.append(
            {
                "provider": f"trl {r['name']} (batch {batch})",
                "label_tok_per_s": round(r["tok_per_s"], 1),
                "mfu": "",
                "peak_gib": round(r["peak_gib"], 2),
                "estimate_gib": "",
            }
        )
    return rows


def _epoch_student(args: argparse.Namespace, workdir: Path) -> str:
    """--epoch-model as given, or a random-init --epoch-shape student built around the tokenizer
    in that folder (the same initial weights for both runs)."""
    folder = Path(args.epoch_model)
    if not folder.is_dir() or (folder / "config.json").exists():
        return args.epoch_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model_config(args.epoch_shape, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    student = workdir / f"student-{args.epoch_shape}"
    AutoModelForCausalLM.from_config(config).save_pretrained(student)
    tokenizer.save_pretrained(student)
    return str(student)


def _epoch_rows(args: argparse.Namespace, workdir: Path) -> list[dict]:
    from cd_fast.train import TrainConfig, Trainer

    student = _epoch_student(args, workdir)

    def config(name: str, **options) -> TrainConfig:
        return TrainConfig(
            output_dir=str(workdir / name),
            overwrite_output_dir=True,
            logging_steps=10,
            save_steps=0,
            max_tokens_per_step=args.tokens_per_step,
            max_seq_length=args.tokens_per_step,
            export="none",
            device=args.device,
            learning_rate=1e-5,
            **options,
        )

    # Compilation (Triton, FlashAttention-4's JIT, cuBLAS handles) stays out of both timings.
    for label, path in zip(("original", "compressed"), args.epoch, strict=True):
        Trainer(student, path, config(f"warmup-{label}", max_steps=3), progress=False).train()
    rows = []
    for label, path in zip(("original", "compressed"), args.epoch, strict=True):
        trainer = Trainer(
            student, path, config(f"epoch-{label}", num_train_epochs=1), progress=False
        ).setup()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = trainer.train()
        seconds = round(time.perf_counter() - started, 2)
        tokens = trainer.train_set.label_tokens
        rows.append(
            {
                "traces": label,
                "file": Path(path).name,
                "label_tokens": tokens,
                "steps": result.step,
                "seconds": seconds,
            }
        )
    base = rows[0]
    for row in rows:
        row["speedup"] = round(base["seconds"] / row["seconds"], 2) if row["seconds"] else ""
        row["token_ratio"] = round(base["label_tokens"] / row["label_tokens"], 2)
    return rows


def _guarded(what: str, fn, *args) -> list[dict]:
    """Run one measurement; a failure (OOM, a missing package) becomes a row, not the end."""
    try:
        return fn(*args)
    except Exception as error:  # reported in the results and on stderr
        message = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
        print(f"{what}: {message}", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return [
            {
                "provider": what,
                "label_tok_per_s": message,
                "mfu": "",
                "peak_gib": "",
                "estimate_gib": "",
            }
        ]


def _this_session(csv_path: Path, env: dict, benchmark: str) -> list[dict]:
    """Rows of `benchmark` measured at this commit on this GPU (runs split over several calls
    land in one table)."""
    if not csv_path.exists():
        return []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return [
            r
            for r in csv.DictReader(handle)
            if r.get("benchmark") == benchmark
            and r.get("commit") == env["commit"]
            and r.get("gpu") == env["gpu"]
        ]


def run(args: argparse.Namespace) -> list[dict]:
    from cd_fast.runtime import rank_info

    if rank_info().rank != 0:  # under torchrun the other ranks train and write nothing
        with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:
            for name in args.runs:
                variants = args.variants if RUNS[name][1] == "full" else ["qlora"]
                for variant in variants:
                    _our_run(name, variant, args, Path(tmp))
        return []
    env = environment()
    rows: list[dict] = []
    csv_path = args.results_dir / "train.csv"
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:
        for name in args.runs:
            shape, mode, mean, *_ = RUNS[name]
            group = []
            for variant in args.variants if mode == "full" else ["qlora"]:
                ours = _guarded(
                    f"cd_fast ({variant})",
                    lambda n=name, v=variant: [_our_run(n, v, args, Path(tmp))],
                )
                group += ours
                print(f"{name}: {ours[0]}")
            if args.trl:
                group += _guarded("trl", _trl_runs, name, args)
            trl = [
                r["label_tok_per_s"]
                for r in group
                if r["provider"].startswith("trl") and isinstance(r["label_tok_per_s"], float)
            ]
            best_trl = max(trl, default=None)
            for row in group:
                speed = row["label_tok_per_s"]
                row.update(
                    {
                        **env,
                        "benchmark": "train",
                        "run": name,
                        "shape": shape,
                        "mode": mode,
                        "mean_len": mean,
                        "device": args.device,
                        "vs_best_trl": round(speed / best_trl, 2)
                        if best_trl and isinstance(speed, float)
                        else "",
                    }
                )
            append_csv(csv_path, group)  # as each run ends: a later failure loses nothing
            rows += group
        if args.epoch:
            epoch = _guarded("epoch", _epoch_rows, args, Path(tmp))
            for row in epoch:
                row.update({**env, "benchmark": "train_epoch", "device": args.device})
            append_csv(csv_path, epoch)
            rows += epoch
    columns = [
        "run",
        "provider",
        "label_tok_per_s",
        "vs_best_trl",
        "mfu",
        "peak_gib",
        "estimate_gib",
    ]
    epoch_rows = _this_session(csv_path, env, "train_epoch")
    extra = ""
    if epoch_rows:
        extra = (
            "\n## One epoch, original vs compressed traces\n\n"
            + markdown_table(
                epoch_rows,
                ["traces", "file", "label_tokens", "steps", "seconds", "speedup", "token_ratio"],
            )
            + "\n"
        )
    write_results(
        args.results_dir,
        "train",
        _this_session(csv_path, env, "train"),
        columns,
        "SFT throughput: cd_fast vs TRL",
        f"{env['date']}, commit {env['commit']}, device {args.device} (GPU: {env['gpu']}), torch "
        f"{env['torch']}. Random-init weights, lognormal lengths (sigma 0.7, 64..4096), "
        f"{args.steps} steps with {args.warmup} untimed. MFU = (6*N*sum(l) + 12*L*H*Q*sum(l^2)) "
        "/ time / peak bf16. cd_fast (bf16): pure bf16 AdamW, as TRL's bf16 runs; cd_fast "
        "(master): fp32 master weights and optimizer states (cd_fast's default).",
        "python -m bench train",
        extra,
        append=False,
    )
    return rows
