"""TrainConfig: every option of `cdfast train` / `cd_fast.train.Trainer`, named as in TRL."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cd_fast.config import check_ranges, option
from cd_fast.formats import DEFAULT_TARGET_TEMPLATE, check_target_template

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr")
OPTIMIZERS = ("adamw", "adamw_8bit")
NAN_POLICIES = ("stop", "skip")
EXPORTS = ("auto", "merged", "adapter", "none")
DISTRIBUTED = ("auto", "ddp", "fsdp")
LOSS_BACKENDS = ("cd_fast", "liger")


@dataclass
class TrainConfig:
    """Options of one training run. Fields map one to one onto `cdfast train --flag-name`."""

    output_dir: str = option(
        flags=("-o", "--output-dir"),
        help="Checkpoints, metrics.jsonl, the final export and train_config.json go here.",
    )
    learning_rate: float = option(
        2e-5,
        above=0,
        help="Peak learning rate (LoRA/QLoRA usually want ~1e-4 to 2e-4).",
    )
    num_train_epochs: float = option(1.0, help="Passes over the data; ignored when max_steps > 0.")
    max_steps: int = option(-1, help="Optimizer steps to run (> 0 overrides num_train_epochs).")
    warmup_ratio: float = option(
        0.0,
        help="Fraction of the steps spent warming the learning rate up linearly.",
    )
    lr_scheduler_type: str = option(
        "cosine",
        choices=SCHEDULERS,
        help="Learning-rate schedule after warm-up (transformers' get_scheduler).",
    )
    weight_decay: float = option(
        0.0,
        help="AdamW decoupled weight decay on matrices (not on norms and biases).",
    )
    max_grad_norm: float = option(
        1.0,
        help="Clip the global gradient norm to this (<= 0: no clipping, norm still logged).",
    )
    adam_beta1: float = option(0.9, help="AdamW first-moment decay.")
    adam_beta2: float = option(0.999, help="AdamW second-moment decay.")
    adam_epsilon: float = option(1e-8, help="AdamW denominator epsilon.")
    optim: str = option(
        "adamw",
        choices=OPTIMIZERS,
        help='"adamw" (torch, fused on CUDA and CPU) or "adamw_8bit" (bitsandbytes, CUDA).',
    )
    max_tokens_per_step: int = option(
        16384,
        minimum=1,
        help="Tokens per optimizer step, summed over micro-batches and ranks (no padding).",
    )
    gradient_accumulation_steps: int = option(
        1,
        minimum=1,
        help="Micro-batches per step and rank: each holds ~max_tokens_per_step / (accum * ranks).",
    )
    max_seq_length: int = option(
        4096,
        minimum=2,
        help="Longer samples are cut to this many tokens (their tail, the answer, is lost: "
        "counted).",
    )
    logging_steps: int = option(
        10,
        minimum=1,
        help="Write a metrics row every N steps (the only place the loop reads device values).",
    )
    save_steps: int = option(
        500,
        minimum=0,
        help="Checkpoint every N steps and at the end (0: only on SIGTERM).",
    )
    save_total_limit: int | None = option(
        2,
        minimum=1,
        help="Keep this many most recent checkpoints (None: all).",
    )
    seed: int = option(42, help="Seeds model init, LoRA init, dropout and the data order.")
    bf16: bool | None = option(
        None,
        help="bf16 weights and compute (default: on for CUDA, off for CPU).",
    )
    master_weights: bool = option(
        True,
        help="With bf16: fp32 master weights and fp32 AdamW states (16 bytes per trained "
        "parameter); False trains pure bf16 (8 bytes per parameter, less exact updates).",
    )
    gradient_checkpointing: bool = option(
        False,
        help="Recompute each decoder block in the backward pass (less memory, ~30% more compute).",
    )
    lora_r: int = option(0, minimum=0, help="LoRA rank; 0 trains every weight (full fine-tune).")
    lora_alpha: int = option(32, help="LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = option(0.0, help="Dropout on the LoRA input.")
    lora_target_modules: list[str] | str = option(
        "all-linear",
        help='Module names that get adapters ("all-linear": every linear layer but the LM head).',
    )
    load_in_4bit: bool = option(
        False,
        help="QLoRA: NF4 base weights with double quantisation (needs lora_r > 0).",
    )
    liger: bool | None = option(
        None,
        help="Liger's RMSNorm/SwiGLU kernels (default: on CUDA when installed).",
    )
    loss_backend: str = option(
        "cd_fast",
        choices=LOSS_BACKENDS,
        help='The fused LM-head loss: "cd_fast" (its own kernel: chunks sized by loss_chunk_mib, '
        'no host sync; CPU too) or "liger" (Liger-Kernel\'s fused linear cross entropy, CUDA).',
    )
    compile: bool = option(
        False,
        help="torch.compile each decoder block (with static_shapes: one shape, no recompiles).",
    )
    cuda_graphs: bool = option(
        False,
        help="Capture the whole optimizer step (forward, backward, clipping, AdamW) as one CUDA "
        "graph after 3 eager steps and replay it (one process, static_shapes, cd_fast's loss).",
    )
    static_shapes: bool | None = option(
        None,
        help="Pad every micro-batch to one shape (tokens, sequence count and max_seqlen fixed "
        "for the run; the padding is label-free sequences that attend only to themselves), so "
        "compiled blocks never recompile, and keep the learning rate a device tensor (AdamW "
        "capturable on CUDA; not with adamw_8bit). Default: on for CUDA. On a CPU the attention "
        "then runs one masked call per row.",
    )
    target_template: str = option(
        DEFAULT_TARGET_TEMPLATE,
        help="The supervised target; {trace} and {answer} are filled per record, EOS appended.",
    )
    nan_policy: str = option(
        "stop",
        choices=NAN_POLICIES,
        help='On a non-finite loss: "stop" (checked at each log, names the step and samples) or '
        '"skip" the step (decided on the device, no host sync; reported at the next log).',
    )
    max_memory: float | None = option(
        None,
        above=0,
        help="GiB the run may use on the device: picks micro-batch size and checkpointing, or "
        "fails.",
    )
    export: str = option(
        "auto",
        choices=EXPORTS,
        help='Final model: "merged" weights, the LoRA "adapter", "auto" (adapter for LoRA), '
        '"none".',
    )
    device: str | None = option(None, help="cuda or cpu (default: cuda when available).")
    distributed: str = option(
        "auto",
        choices=DISTRIBUTED,
        help='How torchrun\'s ranks share the run: "fsdp" shards weights, gradients and AdamW '
        'states (FSDP2); "ddp" replicates them; "auto": fsdp for full fine-tunes, ddp for LoRA '
        "and QLoRA (small adapters, no weight all-gathers). Ignored by a single process.",
    )
    fsdp_cpu_offload: bool = option(
        False,
        help="With fsdp: keep the sharded weights, gradients and AdamW states in CPU memory (the "
        "optimizer steps on the CPU) for GPUs too small for their shard.",
    )
    resume: bool = option(
        False,
        help="Continue from the latest checkpoint in output_dir (refused when the data, model "
        "or a setting that changes the result differs from the run's run.json).",
    )
    overwrite_output_dir: bool = option(
        False,
        help="Train from scratch into an output_dir that holds a finished or checkpointed run, "
        "deleting its final/, checkpoints and metrics.",
    )
    loss_chunk_mib: int = option(
        1024,
        minimum=1,
        help="MiB for one chunk of the loss's fp32 logits and their gradient (more rows per "
        "chunk: fewer, faster GEMMs).",
    )

    def __post_init__(self) -> None:
        checks = [
            (
                self.lr_scheduler_type in SCHEDULERS,
                f"lr_scheduler_type must be one of {SCHEDULERS}",
            ),
            (self.optim in OPTIMIZERS, f"optim must be one of {OPTIMIZERS}"),
            (self.nan_policy in NAN_POLICIES, f"nan_policy must be one of {NAN_POLICIES}"),
            (
                self.loss_backend in LOSS_BACKENDS,
                f"loss_backend must be one of {LOSS_BACKENDS}",
            ),
            (self.export in EXPORTS, f"export must be one of {EXPORTS}"),
            (self.distributed in DISTRIBUTED, f"distributed must be one of {DISTRIBUTED}"),
            (
                not (self.fsdp_cpu_offload and self.distributed == "ddp"),
                "fsdp_cpu_offload needs distributed='fsdp' (or 'auto' on a full fine-tune)",
            ),
            (
                not (self.load_in_4bit and self.distributed == "fsdp"),
                "QLoRA (load_in_4bit) runs under distributed='ddp': FSDP2 does not shard "
                "bitsandbytes' NF4 weights",
            ),
            (self.max_steps > 0 or self.num_train_epochs > 0, "set max_steps or num_train_epochs"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must lie in [0, 1)"),
            (not self.load_in_4bit or self.lora_r > 0, "load_in_4bit (QLoRA) needs lora_r > 0"),
        ]
        check_ranges(self)
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_target_template(self.target_template)
        if self.lora_target_modules == ["all-linear"]:  # peft wants this one as a string
            self.lora_target_modules = "all-linear"

    @property
    def use_lora(self) -> bool:
        return self.lora_r > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_options(self) -> dict[str, Any]:
        """The fields that decide the trained model (a run's manifest options): not where or
        how often the run saves and logs, nor where it runs (FSDP2 checkpoints reshard; the
        steps and their data stay the same)."""
        run_only = (
            "output_dir",
            "resume",
            "overwrite_output_dir",
            "save_steps",
            "save_total_limit",
            "logging_steps",
            "device",
            "distributed",
            "fsdp_cpu_offload",
        )
        return {k: v for k, v in self.to_dict().items() if k not in run_only}
