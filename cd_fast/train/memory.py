"""Device-memory model of a training run, used by `max_memory` to pick micro-batch size and
gradient checkpointing before any weight is loaded.

Per trained run (bytes; P = parameters, T = tokens in one micro-batch, L layers, H hidden,
I MLP width, K = kv width, V vocabulary, a = activation bytes):

    weights     P * w            (w = 2 bf16, 4 fp32, ~0.56 NF4 + double-quant; head/embeddings
                                  always in the compute dtype)
    gradients   P_train * w      (LoRA adapters too compute in the model's dtype)
    optimizer   P_train * 8      (fp32 AdamW m and v; 4 pure bf16; 2 8-bit) + 4 * P_train for
                                  fp32 master weights
    activations T * L * a * (10 H + 2 K + 4 I) + T * L * 8 H   (saved per block, fp32 norms)
                with checkpointing: T * L * a * H + one block's activations
    loss        T * H * a * 2 + min(T * V * (4 + a), loss_chunk_mib) (+ V * H * w for the
                head's gradient in a full fine-tune)

Under FSDP2 weights, gradients and optimizer states count 1/world (none with CPU offload) plus
two unsharded blocks and the embeddings (gathered by the root unit). Plus a fixed 1 GiB for the
CUDA context, cuBLAS workspaces and allocator slack. It is an upper estimate of a transformers
decoder (Llama/Qwen/Mistral family); Liger's kernels save less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cd_fast.train.config import TrainConfig

GIB = 2**30
OVERHEAD_BYTES = GIB
LORA_LINEARS_PER_LAYER = 7


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linear_layers: int = 0  # Gated-DeltaNet layers of a hybrid (Qwen3.5): no attention
    linear_mixer_params: int = 0  # the projections of one such layer
    gated_attention: bool = False  # q_proj also emits an output gate (Qwen3.5, Qwen3-Next)

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        linear_layers = list(getattr(text, "layer_types", None) or []).count("linear_attention")
        mixer = 0
        if linear_layers:
            keys = text.linear_num_key_heads * text.linear_key_head_dim
            values = text.linear_num_value_heads * text.linear_value_head_dim
            # q, k, v and the output gate z in; a, b per value head; out
            mixer = text.hidden_size * (2 * keys + 2 * values + 2 * text.linear_num_value_heads)
            mixer += values * text.hidden_size
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=text.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            linear_layers=linear_layers,
            linear_mixer_params=mixer,
            gated_attention=linear_layers > 0,  # every supported hybrid gates its attention
        )

    @property
    def attention_layers(self) -> int:
        return self.layers - self.linear_layers

    @property
    def blocks_params(self) -> int:
        """Weights of all decoder blocks: attention or Gated-DeltaNet mixer, plus the MLP."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * ((3 if self.gated_attention else 2) * q + 2 * kv)
        mlp = 3 * self.hidden * self.intermediate
        linear = self.linear_layers * self.linear_mixer_params
        return self.attention_layers * attention + linear + self.layers * mlp

    @property
    def matmul_params(self) -> int:
        """N in the MFU formula: every weight a token is multiplied by (LM head included)."""
        return self.blocks_params + self.vocab * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, r: int) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
        return self.layers * sum(r * (a + b) for a, b in shapes)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    loss: float
    overhead: float
    micro_batch_tokens: int
    gradient_checkpointing: bool
    gradient_accumulation_steps: int

    @property
    def total(self) -> float:
        return (
            self.weights + self.gradients + self.optimizer + self.activations + self.loss
        ) + self.overhead

    def describe(self) -> str:
        parts = ["weights", "gradients", "optimizer", "activations", "loss", "overhead"]
        detail = ", ".join(f"{p} {getattr(self, p) / GIB:.2f}" for p in parts)
        return (
            f"{self.total / GIB:.2f} GiB ({detail}) at {self.micro_batch_tokens} tokens per "
            f"micro-batch, checkpointing {'on' if self.gradient_checkpointing else 'off'}"
        )


def micro_batch_tokens(config: TrainConfig, accumulation: int, world_size: int) -> int:
    """Upper bound on one micro-batch: its share of the step plus one sequence (the greedy
    split can overshoot the share by at most its largest piece)."""
    parts = accumulation * world_size
    if parts == 1:
        return config.max_tokens_per_step
    share = math.ceil(config.max_tokens_per_step / parts)
    longest = min(config.max_seq_length, config.max_tokens_per_step)
    return min(config.max_tokens_per_step, share + longest)


def estimate_memory(
    shape: ModelShape,
    config: TrainConfig,
    on_cuda: bool,
    gradient_checkpointing: bool,
    accumulation: int,
    world_size: int = 1,
    sharded: bool = False,
) -> MemoryEstimate:
    bf16 = bool(config.bf16)
    w = 2 if bf16 else 4
    a = w
    tokens = micro_batch_tokens(config, accumulation, world_size)
    embeddings = shape.embedding_params
    blocks = shape.blocks_params
    if config.load_in_4bit:
        weights = blocks * (0.5 + 0.5 / 64 + 4 / 256 / 64) + embeddings * w
    else:
        weights = (blocks + embeddings) * w
    trained = shape.lora_params(config.lora_r) if config.use_lora else blocks + embeddings
    gradients = trained * w  # adapters too compute in the model's dtype
    state = {"adamw": 8 if (not bf16 or config.master_weights) else 4, "adamw_8bit": 2}
    optimizer = trained * state[config.optim]
    if bf16 and config.master_weights:
        optimizer += trained * 4  # fp32 masters
    if sharded:  # FSDP2: 1/world of each, plus two gathered blocks (one prefetched)
        gathered = 2 * blocks / shape.layers * w + embeddings * w
        kept = 0 if config.fsdp_cpu_offload else 1 / world_size
        weights = weights * kept + gathered
        gradients *= kept
        optimizer *= kept
    h, k, i = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
    block = tokens * (a * (10 * h + 2 * k + 4 * i) + 8 * h)
    if gradient_checkpointing:
        activations = tokens * shape.layers * a * h + block
    else:
        activations = shape.layers * block
    # the loss: hidden states and their gradient, one chunk of fp32 logits with their gradient
    # (in the compute dtype unless fp32), the LM head's gradient when it is trained
    per_row = shape.vocab * (4 + (a if bf16 else 0))
    loss = tokens * h * a * 2 + min(tokens * per_row, config.loss_chunk_mib << 20)
    if not config.use_lora:
        loss += shape.vocab * h * w
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        loss=loss,
        overhead=OVERHEAD_BYTES if on_cuda else 0,
        micro_batch_tokens=tokens,
        gradient_checkpointing=gradient_checkpointing,
        gradient_accumulation_steps=accumulation,
    )


def fit_memory(
    shape: ModelShape,
    config: TrainConfig,
    max_memory_gib: float,
    on_cuda: bool,
    world_size: int = 1,
    sharded: bool = False,
) -> MemoryEstimate:
    """The cheapest settings that fit: as asked, then with checkpointing, then with more (smaller)
    micro-batches per step. Raises ValueError (with the smallest estimate) when nothing fits."""
    budget = max_memory_gib * GIB
    accumulation = config.gradient_accumulation_steps
    tried: list[MemoryEstimate] = []
    while True:
        for checkpointing in (config.gradient_checkpointing, True):
            estimate = estimate_memory(
                shape, config, on_cuda, checkpointing, accumulation, world_size, sharded
            )
            tried.append(estimate)
            if estimate.total <= budget:
                return estimate
        smallest = config.max_tokens_per_step / (accumulation * world_size)
        if smallest <= config.max_seq_length:
            break
        accumulation *= 2
    best = min(tried, key=lambda e: e.total)
    raise ValueError(
        f"the run does not fit in max_memory={max_memory_gib} GiB: the smallest configuration "
        f"needs about {best.describe()}. Use QLoRA (--load-in-4bit --lora-r 16), a smaller "
        "--max-seq-length, or more memory."
    )
