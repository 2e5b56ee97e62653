"""How the ranks of a torchrun launch share one training run: DDP or FSDP2.

DDP replicates the model and its optimizer on every rank and all-reduces gradients. FSDP2
(`torch.distributed.fsdp.fully_shard`) shards them instead: every decoder block is its own
FSDP unit (all-gathered just before its forward and backward, resharded after), the root unit
(the loss module) owns the embeddings, final norm and LM head. Each rank stores 1/world of the
weights, gradients and AdamW states, so a full fine-tune too big for one GPU fits on several.

Precision under FSDP2: the sharded weights are the fp32 masters (bf16 with
`master_weights=False`), computed in bf16 through `MixedPrecisionPolicy(param_dtype=bf16)`;
gradients are reduce-scattered in fp32. Gradients are reduce-scattered after every micro-batch
(the unsharded gradients of a whole model are never held), and an idle rank joins with a
zero-weight batch, as under DDP.

Checkpoints are `torch.distributed.checkpoint` (DCP) folders: every rank writes its shards, and
DCP reshards on load, so a run can resume on another number of ranks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from cd_fast.train.config import TrainConfig

logger = logging.getLogger(__name__)

# Only what training changes goes into a checkpoint: a LoRA run saves its adapters, not the base.
_TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)
_LOAD_TRAINED = StateDictOptions(ignore_frozen_params=True, strict=False)


def resolve_strategy(config: TrainConfig, world_size: int) -> str | None:
    """ "ddp" or "fsdp" for a launch of `world_size` ranks (None for a single process)."""
    if world_size == 1:
        if config.distributed == "fsdp" or config.fsdp_cpu_offload:
            logger.info("one process: distributed=%s is not used", config.distributed)
        return None
    if config.distributed != "auto":
        return config.distributed
    return "ddp" if config.use_lora else "fsdp"


def load_dtype(config: TrainConfig, strategy: str | None) -> torch.dtype:
    """The dtype weights are loaded in: fp32 for FSDP2's sharded masters of a bf16 full
    fine-tune, else the compute dtype (the trainer keeps separate masters then)."""
    if not config.bf16:
        return torch.float32
    if strategy == "fsdp" and config.master_weights and not config.use_lora:
        return torch.float32
    return torch.bfloat16


def shard(
    loss_module: nn.Module, blocks: nn.ModuleList, device: torch.device, config: TrainConfig
) -> None:
    """fully_shard each decoder block, then the root; the weights move to `device` block by
    block (or stay on the CPU with fsdp_cpu_offload)."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if config.bf16 else None, reduce_dtype=torch.float32
    )
    options: dict = {"mesh": mesh, "mp_policy": policy}
    if config.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(loss_module, **options)


def any_rank(flag: torch.Tensor, world_size: int) -> torch.Tensor:
    """A device bool true on every rank when it is true on any (an all-reduce, no host sync)."""
    if world_size == 1:
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.bool()


def agreed_stop(
    received: int | None, world_size: int, log_step: bool, device: torch.device
) -> int | None:
    """The stop signal received (SIGTERM, Ctrl-C), if any. Alone: at every step. Under DDP the
    ranks agree at logging steps (the only place the loop may sync), so they checkpoint at the
    same step."""
    if world_size == 1:
        return received
    if not log_step:
        return None
    flag = torch.tensor([received or 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ over sharded gradients returns a DTensor: its global value."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def save_sharded(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the trained weights and their AdamW states (collective)."""
    model_state, optimizer_state = get_state_dict(module, optimizer, options=_TRAINED_ONLY)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load_sharded(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a `save_sharded` folder into this run's shards, whatever world size wrote it."""
    model_state, optimizer_state = get_state_dict(module, optimizer, options=_TRAINED_ONLY)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(
        module,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_LOAD_TRAINED,
    )


def gather_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of `module` on rank 0's CPU, empty elsewhere
    (collective: every rank calls it). A tied weight appears once, under its first name, as
    save_pretrained writes it from an unsharded model."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module, options=options)
    first_names = {name for name, _ in module.named_parameters()}
    aliases = {name for name, _ in module.named_parameters(remove_duplicate=False)} - first_names
    return {name: tensor for name, tensor in state.items() if name not in aliases}
