"""Building the trained model: load, make it packable (with Liger on CUDA), LoRA / QLoRA,
checkpointing, compile; and the loss module around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cd_fast.kernels import PackedBatch
from cd_fast.models import load_causal_lm
from cd_fast.patches import causal_lm, make_packable, register
from cd_fast.train.config import TrainConfig
from cd_fast.train.loss import linear_cross_entropy_sum


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    decoder = causal_lm(model).get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(decoder).__name__} has no `layers` list of decoder blocks")
    return layers


def load_model(
    spec: str | Path, config: TrainConfig, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a local folder, hub id or .gguf file, QLoRA-quantised if asked."""
    options: dict[str, Any] = {}
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
        options["device_map"] = {"": device}
    return load_causal_lm(spec, device, dtype, attn_implementation=register(), **options)


def add_lora(model: nn.Module, config: TrainConfig, dtype: torch.dtype) -> nn.Module:
    """peft LoRA adapters on `config.lora_target_modules`, computing in `dtype` (the model's
    compute dtype). peft keeps adapters in fp32 by default, so in a bf16 model every adapter
    input is cast to fp32 and its GEMMs run in fp32; here they run in bf16 and the optimizer
    keeps fp32 masters of them (`optim.MasterWeights`), as for a full fine-tune."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    # No prepare_model_for_kbit_training: it upcasts the LM head and norms to fp32.
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)
    return model


def prepare_model(
    model: nn.Module | str | Path,
    config: TrainConfig,
    device: torch.device,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
    load_device: torch.device | None = None,
) -> tuple[nn.Module, Any]:
    """Load (or take) the model and make it trainable as `config` says, for computing on
    `device`. The weights go to `load_device` (default `device`) in `dtype` (default: bf16 or
    fp32 as config.bf16 says)."""
    dtype = dtype or (torch.bfloat16 if config.bf16 else torch.float32)
    load_device = load_device or device
    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_model(model, config, load_device, dtype)
        tokenizer = tokenizer or loaded_tokenizer
    else:
        if config.load_in_4bit:
            raise ValueError("QLoRA quantises while loading: pass a model path, not a model")
        model = model.to(device=load_device, dtype=dtype)
    model.config.use_cache = False
    # Liger's kernels are Triton on CUDA: asked for (True), or by default there (None: when
    # installed)
    liger = config.liger if config.liger is not None else (None if device.type == "cuda" else False)
    make_packable(model, liger=liger)
    if config.gradient_checkpointing:
        lm = causal_lm(model)
        options = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    if config.use_lora:
        model = add_lora(model, config, dtype)
    else:
        model.requires_grad_(True)
    if config.compile:
        for layer in decoder_layers(model):
            layer.compile()
    model.train()
    return model, tokenizer


class CausalLMLoss(nn.Module):
    """Decoder + fused LM-head loss: returns the summed next-token loss of a packed batch.

    Wrapping the loss in a module lets DDP see the LM head used outside its own forward.
    """

    def __init__(self, model: nn.Module, backend: str, max_chunk_bytes: int):
        super().__init__()
        self.model = model
        self.backend = backend
        self.max_chunk_bytes = max_chunk_bytes

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        lm = causal_lm(self.model)
        kwargs = batch.model_kwargs()
        kwargs.pop("use_cache")
        hidden = lm.get_decoder()(**kwargs, use_cache=False).last_hidden_state[0]  # [T, H]
        targets = batch.labels[0, 1:]  # token t predicts t + 1; -100 at sequence starts
        weight = lm.get_output_embeddings().weight
        return linear_cross_entropy_sum(
            hidden[:-1], weight, targets, self.backend, self.max_chunk_bytes
        )
