"""The final model of a training run, output_dir/final (written whole, then renamed): merged
weights or the LoRA adapter, plus the tokenizer. A QLoRA or FSDP2 LoRA adapter is merged into
a base reloaded unquantised on the CPU; FSDP2 gathers the shards first (every rank calls)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cd_fast.patches import causal_lm
from cd_fast.train import distributed
from cd_fast.train.config import TrainConfig
from cd_fast.train.model import load_model


def export_mode(config: TrainConfig) -> str:
    """merged | adapter | none, with "auto" resolved (the adapter for LoRA)."""
    mode = (
        config.export if config.export != "auto" else ("adapter" if config.use_lora else "merged")
    )
    if mode == "adapter" and not config.use_lora:
        raise ValueError("export='adapter' needs LoRA (lora_r > 0)")
    return mode


def export_final(
    output_dir: Path,
    model: nn.Module,
    tokenizer: Any,
    config: TrainConfig,
    model_spec: str | None,
    sharded: bool,
    rank: int,
) -> Path | None:
    """Write output_dir/final as `config.export` says; returns its path on rank 0."""
    c = config
    mode = export_mode(c)
    if mode == "none":
        return None
    merge_from_base = mode == "merged" and c.use_lora and (c.load_in_4bit or sharded)
    if merge_from_base and model_spec is None:
        raise ValueError(
            "merging a QLoRA or FSDP2 LoRA adapter reloads the base model: pass its path, "
            "or export='adapter'"
        )
    gathered: dict[str, Any] = {}
    if sharded:
        target = model if c.use_lora else causal_lm(model)
        gathered = {"state_dict": distributed.gather_state_dict(target)}
    if rank != 0:
        return None
    final = output_dir / ".final.partial"  # renamed to final/ once whole
    shutil.rmtree(final, ignore_errors=True)
    if mode == "adapter":
        model.save_pretrained(final, **gathered)
    elif merge_from_base:
        final.mkdir(parents=True, exist_ok=True)
        adapter = output_dir / "final-adapter"
        model.save_pretrained(adapter, **gathered)
        from peft import PeftModel

        dtype = torch.bfloat16 if c.bf16 else torch.float32
        base, _ = load_model(model_spec, replace(c, load_in_4bit=False), torch.device("cpu"), dtype)
        PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(final)
    elif c.use_lora:
        model.merge_and_unload().save_pretrained(final)
    else:
        lm = causal_lm(model)
        if sharded and c.bf16:  # the gathered fp32 masters, saved as a single GPU run saves
            weights = gathered["state_dict"]
            gathered["state_dict"] = {n: t.to(torch.bfloat16) for n, t in weights.items()}
            lm.config.dtype = torch.bfloat16
        lm.save_pretrained(final, **gathered)
    if tokenizer is not None:
        tokenizer.save_pretrained(final)
    done = output_dir / "final"
    shutil.rmtree(done, ignore_errors=True)
    final.rename(done)
    return done
