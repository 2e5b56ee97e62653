"""`cdfast train`: packed varlen SFT (full, LoRA, QLoRA) on trace records."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cd_fast.cli.common import (
    INPUT_HELP,
    add_input_arguments,
    open_input,
    report_skips,
)
from cd_fast.config import add_config_arguments, config_from_args
from cd_fast.train.config import TrainConfig

NAME = "train"
HELP = "fine-tune a student on traces: packed batches, fused loss, LoRA/QLoRA, exact resume"
DESCRIPTION = f"""Supervised fine-tuning on trace records: prompt = the question through the
tokenizer's chat template, target = "<think>\\n{{trace}}\\n</think>\\n\\n{{answer}}" + EOS,
loss on the target only. Steps are token budgets (--max-tokens-per-step) packed without
padding; attention runs varlen (FlashAttention-4 / flash-attn / torch varlen on CUDA,
per-sequence SDPA on CPU); the loss never builds [tokens, vocab] logits (Liger on CUDA, a
chunked torch loss on CPU).

Writes OUTPUT_DIR/metrics.jsonl (step, loss, lr, grad_norm, tokens_per_s = label tokens/s,
mfu, peak_memory_gib), checkpoint-STEP/ folders (atomic; --resume continues exactly, SIGTERM
checkpoints then exits 143), and OUTPUT_DIR/final (merged model, or the LoRA adapter).

MFU = model FLOP/s / peak bf16 FLOP/s, model FLOPs per packed step = 6*N*sum(l) +
12*L*H*Q*sum(l^2) (N weights a token meets, L layers, H heads, Q head dim, l sequence lengths).

examples:
  cdfast train traces.jsonl --model Qwen/Qwen2.5-0.5B-Instruct -o runs/full
  cdfast train traces.jsonl --model Qwen/Qwen2.5-1.5B-Instruct -o runs/lora \\
      --lora-r 16 --learning-rate 2e-4 --max-tokens-per-step 32768
  cdfast train traces.jsonl --model Qwen/Qwen3-8B -o runs/qlora --load-in-4bit --lora-r 16 \\
      --max-memory 16
  cdfast train traces.jsonl --model M -o runs/full --resume          # after a kill
  # several GPUs: FSDP2 shards a full fine-tune (--distributed ddp replicates; LoRA's default)
  torchrun --nproc-per-node 8 -m cd_fast.cli train traces.jsonl --model M -o runs/fsdp
  # several nodes: the same on each, pointed at one rendezvous (output on a shared filesystem)
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-id run1 \\
      --rdzv-endpoint node0:29500 -m cd_fast.cli train traces.jsonl --model M -o /shared/run1

{INPUT_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument(
        "--model", required=True, help="student: HF hub id, local folder or .gguf file"
    )
    add_config_arguments(parser, TrainConfig, title="training (TrainConfig fields, one flag each)")


def run(args: argparse.Namespace) -> int:
    from cd_fast.train.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(TrainConfig, args)
    read, reader = open_input(args, Path(config.output_dir))
    trainer = Trainer(args.model, reader, config, read=read).setup()
    report_skips(reader)
    result = trainer.train()
    rows = [
        (
            "samples",
            f"{len(trainer.train_set)} ({len(trainer.train_set.truncated)} truncated, "
            f"{len(trainer.train_set.dropped)} dropped: no target token fits)",
        ),
        ("steps", f"{result.step} / {result.total_steps}"),
        ("label tokens/s", f"{result.tokens_per_s:,.0f}"),
        ("last loss", f"{result.losses[max(result.losses)]:.4f}" if result.losses else "-"),
        ("skipped steps", str(len(result.skipped_steps))),
        ("output", str(result.export_path or trainer.output_dir)),
    ]
    if trainer.rank == 0:
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    if result.interrupted:
        print(
            f"stopped by signal {result.stopped_by}: resume with --resume (checkpoint at step "
            f"{result.step})",
            file=sys.stderr,
        )
        return 128 + result.stopped_by
    return 0
