"""`cdfast train`: packed varlen SFT (full, LoRA, QLoRA) on trace records."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import signal
import sys
from typing import Any

from cd_fast.cli.common import INPUT_HELP, add_input_arguments, open_reader, report_skips
from cd_fast.train import config as config_module
from cd_fast.train.config import EXPORTS, NAN_POLICIES, OPTIMIZERS, SCHEDULERS, TrainConfig

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
  torchrun --nproc-per-node 8 -m cd_fast.cli train traces.jsonl --model M -o runs/ddp

{INPUT_HELP}"""

SKIPPED_FIELDS = {"output_dir", "extra", "resume"}
CHOICES = {
    "lr_scheduler_type": SCHEDULERS,
    "optim": OPTIMIZERS,
    "nan_policy": NAN_POLICIES,
    "export": EXPORTS,
}


def _field_docs() -> dict[str, str]:
    """TrainConfig's attribute docstrings (the string under each field), for --help."""
    tree = ast.parse(inspect.getsource(config_module))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        ):
            text = " ".join(str(after.value.value).split())
            docs[node.target.id] = text.replace("%", "%%")  # argparse formats help with %
    return docs


def _flag_type(annotation: str) -> Any:
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument(
        "--model", required=True, help="student: HF hub id, local folder or .gguf file"
    )
    parser.add_argument("-o", "--output-dir", required=True, help="run folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the folder"
    )
    parser.add_argument("--limit", type=int, help="train on the first N records only")
    group = parser.add_argument_group("training (TrainConfig fields, one flag each)")
    docs = _field_docs()
    for spec in dataclasses.fields(TrainConfig):
        if spec.name in SKIPPED_FIELDS:
            continue
        flag = "--" + spec.name.replace("_", "-")
        help_text = docs.get(spec.name, "")
        annotation = str(spec.type)
        if annotation.startswith("bool"):
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=spec.default, help=help_text
            )
        elif spec.name == "lora_target_modules":
            group.add_argument(flag, nargs="+", default=spec.default, help=help_text)
        else:
            group.add_argument(
                flag,
                type=_flag_type(annotation),
                choices=CHOICES.get(spec.name),
                default=spec.default,
                help=help_text,
            )


def run(args: argparse.Namespace) -> int:
    from cd_fast.train.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be > 0, got {args.limit}")
    values = {
        name: getattr(args, name)
        for name in TrainConfig.field_names()
        if name not in SKIPPED_FIELDS
    }
    targets = values["lora_target_modules"]
    if isinstance(targets, list) and len(targets) == 1:
        values["lora_target_modules"] = targets[0]
    config = TrainConfig(
        output_dir=args.output_dir,
        resume=args.resume,
        extra={"data": str(args.input), "prompts": str(args.prompts) if args.prompts else None},
        **values,
    )
    reader = open_reader(args)
    records = reader if args.limit is None else _first(reader, args.limit)
    trainer = Trainer(args.model, records, config)
    report_skips(reader)
    result = trainer.train()
    rows = [
        ("samples", f"{len(trainer.train_set)} ({len(trainer.train_set.truncated)} truncated)"),
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
        print(f"stopped by signal: resume with --resume (checkpoint at step {result.step})",
              file=sys.stderr)  # fmt: skip
        return 128 + signal.SIGTERM
    return 0


def _first(reader: Any, limit: int) -> Any:
    for index, record in enumerate(reader):
        if index >= limit:
            return
        yield record
