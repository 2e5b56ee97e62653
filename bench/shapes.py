"""Model shapes shared by the benchmarks and the tests, by name: the transformers config class
and its fields. The real models' shapes are what the GPU runs measure (random weights); the
tiny ones are what CPU tests and smoke runs build."""

from __future__ import annotations

from typing import Any

# The tests' tiny random students, 2 layers and 64 wide (their vocabulary is their tokenizer's);
# LoRA freezes the random head: a wider init gives its logits a range the adapters can use.
_TINY_STUDENT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=4096,
)

SHAPES = {
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-1.5b": (
        "Qwen2Config",
        dict(
            hidden_size=1536,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            intermediate_size=8960,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "qwen3-8b": (
        "Qwen3Config",
        dict(
            hidden_size=4096,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=12288,
            vocab_size=151936,
            tie_word_embeddings=False,
        ),
    ),
    # Qwen3.5-0.8B's text model: 6 x (3 Gated-DeltaNet + 1 gated attention) layers
    "qwen3.5-0.8b": (
        "Qwen3_5TextConfig",
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=256,
            intermediate_size=3584,
            linear_num_key_heads=16,
            linear_num_value_heads=16,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 6,
            vocab_size=248320,
            tie_word_embeddings=True,
        ),
    ),
    "tiny-qwen2": ("Qwen2Config", _TINY_STUDENT),
    "tiny-qwen3": ("Qwen3Config", {**_TINY_STUDENT, "head_dim": 16, "initializer_range": 0.3}),
    "tiny-llama": ("LlamaConfig", {**_TINY_STUDENT, "initializer_range": 0.3}),
    # Qwen3.5's hybrid: a Gated-DeltaNet layer (causal conv1d + gated delta rule) and attention
    "tiny-qwen3_5": (
        "Qwen3_5TextConfig",
        {
            **_TINY_STUDENT,
            "head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,  # grouped values, as in the real models
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "layer_types": ["linear_attention", "full_attention"],
            "initializer_range": 0.3,
        },
    ),
    # smaller still, 3 layers (Gated-DeltaNet around attention): the packing tests' hybrids
    "micro-qwen3_5": (
        "Qwen3_5TextConfig",
        dict(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            num_hidden_layers=3,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
        ),
    ),
    # a small Qwen2 with 128-wide heads (what FlashAttention-4 takes): the GPU tests' model
    "gpu-qwen2": (
        "Qwen2Config",
        dict(
            hidden_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=512,
            vocab_size=1000,
            tie_word_embeddings=False,
            max_position_embeddings=4096,
        ),
    ),
    "tiny": (
        "Qwen2Config",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=1000,
        ),
    ),
}


def model_config(name: str, **overrides: Any) -> Any:
    """The transformers config of shape `name`, with `overrides` on top of its fields."""
    import transformers

    config_class, fields = SHAPES[name]
    return getattr(transformers, config_class)(**{**fields, **overrides})
