"""The calls cd_fast makes into its GPU-side dependencies, checked where they import on a CPU:
a renamed function or keyword fails here, in CI, instead of on a user's GPU. Each contract names
the cd_fast code that relies on it."""

import inspect

import pytest
import torch


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_liger_instance_patch_and_fused_loss():
    """patches/liger.apply_liger and train/loss._liger_loss."""
    from liger_kernel.transformers import (
        LigerFusedLinearCrossEntropyLoss,
        _apply_liger_kernel_to_instance,
    )
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    assert parameters(_apply_liger_kernel_to_instance)[0] == "model"
    patched = {"rope", "rms_norm", "swiglu", "cross_entropy", "fused_linear_cross_entropy"}
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_next"):
        assert model_type in MODEL_TYPE_TO_APPLY_LIGER_FN, model_type
        assert patched <= set(parameters(MODEL_TYPE_TO_APPLY_LIGER_FN[model_type])), model_type
    assert {"ignore_index", "reduction"} <= set(parameters(LigerFusedLinearCrossEntropyLoss))
    # called positionally: liger(weight, hidden, targets)
    assert parameters(LigerFusedLinearCrossEntropyLoss.forward)[1:4] == [
        "lin_weight",
        "_input",
        "target",
    ]


def test_liger_scaled_cross_entropy_used_by_the_benchmark():
    """bench/token_scores.liger_scaled_ce: apply(hidden, weight, targets, return_entropy=True)."""
    from liger_kernel.ops.fused_linear_scaled_cross_entropy import (
        LigerFusedLinearScaledCrossEntropyFunction,
    )

    names = parameters(LigerFusedLinearScaledCrossEntropyFunction.apply)
    assert names[:3] == ["_input", "weight", "target"] and "return_entropy" in names


def test_peft_lora_config_names():
    """train/model.add_lora."""
    from peft import LoraConfig, PeftModel, get_peft_model

    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    assert (config.r, config.lora_alpha, config.target_modules) == (8, 16, "all-linear")
    assert callable(get_peft_model)
    assert {"model", "model_id"} <= set(parameters(PeftModel.from_pretrained))


def test_bitsandbytes_nf4_config_and_8bit_adamw():
    """train/model.load_model (QLoRA) and train/optim._adamw (adamw_8bit). A misspelt
    BitsAndBytesConfig keyword would only be warned about, so the values are read back."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    assert config.load_in_4bit and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == config.bnb_4bit_quant_storage == torch.bfloat16
    assert {"params", "lr", "betas", "eps"} <= set(parameters(bnb.optim.AdamW8bit))


def test_torch_varlen_attention_signature():
    """attention.varlen_attention's torch backend: 7 positional arguments, then keywords."""
    from torch.nn.attention.varlen import varlen_attn

    names = parameters(varlen_attn)
    assert names[:7] == ["query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k"]
    assert "scale" in names
    assert "is_causal" in names or "window_size" in names


def test_fsdp2_and_distributed_checkpoint_names():
    """train/distributed."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    assert {"mesh", "mp_policy", "offload_policy"} <= set(parameters(fully_shard))
    assert {"param_dtype", "reduce_dtype"} <= set(parameters(MixedPrecisionPolicy))
    assert "pin_memory" in parameters(CPUOffloadPolicy)
    options = {"full_state_dict", "cpu_offload", "ignore_frozen_params", "strict"}
    assert options <= set(parameters(StateDictOptions))


def test_flash_linear_attention_delta_rule():
    """linear_attention.gated_delta_rule_varlen's fla backend (the `fla` extra)."""
    module = pytest.importorskip(
        "fla.ops.gated_delta_rule", reason="flash-linear-attention is not installed (extra: fla)"
    )
    names = set(parameters(module.chunk_gated_delta_rule))
    keywords = {"g", "beta", "initial_state", "output_final_state", "cu_seqlens"}
    assert keywords | {"use_qk_l2norm_in_kernel"} <= names


def test_flash_attention_4_varlen():
    """attention.varlen_attention's fa4 backend (the `flash` extra)."""
    try:
        from flash_attn.cute import flash_attn_varlen_func
    except Exception as error:  # the CuTe DSL raises more than ImportError without its runtime
        pytest.skip(f"flash-attn-4 does not import here: {type(error).__name__}")
    names = set(parameters(flash_attn_varlen_func))
    keywords = {"cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "causal"}
    assert keywords | {"softmax_scale", "window_size"} <= names
