"""Packed batches through hybrid linear-attention models (Qwen3.5, Qwen3.5-MoE, Qwen3-Next).

Their Gated-DeltaNet layers mix tokens twice outside attention: a depthwise causal conv1d and
the gated delta rule's recurrent state. transformers 5.x runs both over the whole packed row:
without flash-linear-attention the delta rule refuses `cu_seqlens`, and the conv (its torch
fallback, and the `causal-conv1d` package, which is given no `seq_idx`) lets each sequence's
first tokens see the previous sequence's last ones, silently. `enable_packing(model)` makes
packed == each sequence alone:

  conv        `cd_fast.kernels.causal_conv1d_varlen` (Triton, state reset at every cu_seqlens
              start; the torch reference off CUDA). `CD_FAST_CONV=triton|torch` forces one.
  delta rule  fla   flash-linear-attention's `chunk_gated_delta_rule(..., cu_seqlens=...)`
                    (pip `flash-linear-attention`, Triton; CUDA, bf16/fp16)
              torch transformers' own torch rule, one sequence at a time (CPU, fp32, or no fla)
              `CD_FAST_DELTA_RULE=fla|torch` forces one. Each choice is logged once.

The patch replaces the modeling module's `causal_conv1d_fn` and `torch_chunk_gated_delta_rule`
(the names its GatedDeltaNet.forward calls) with wrappers that take the packed path only when
the call carries sequence boundaries (`cu_seq_lens_q`, which `PackedBatch.model_kwargs()`
passes) and otherwise call transformers' function unchanged: generation and unpacked batches
behave exactly as before. Models with any other token mixer outside attention (Mamba, RWKV,
short convolutions, other linear attentions) are refused before they train or score packed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cd_fast.kernels.causal_conv1d import causal_conv1d_varlen
from cd_fast.runtime import pick_backend, triton_can_run

logger = logging.getLogger(__name__)

CONV_BACKENDS = ("triton", "torch")
DELTA_RULE_BACKENDS = ("fla", "torch")
# transformers modeling modules whose GatedDeltaNet.forward calls the two patched functions
# with the packed boundaries in its keyword arguments.
PACKABLE_MODELING = {
    "qwen3_5": "Qwen3.5",
    "qwen3_5_moe": "Qwen3.5-MoE",
    "qwen3_next": "Qwen3-Next",
}
ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention"}


class UnpackableModelError(ValueError):
    """The model mixes tokens in a way cd_fast cannot keep apart in a packed batch."""


def _fla_chunk_gated_delta_rule() -> Callable | None:
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception:  # fla imports triton kernels; any failure means "not usable here"
        return None
    return chunk_gated_delta_rule


def select_conv_backend(device: torch.device) -> str:
    """ "triton" on CUDA (or under TRITON_INTERPRET=1), else "torch"; CD_FAST_CONV forces one."""
    device = torch.device(device)

    def available() -> list[str]:
        return [*(["triton"] if triton_can_run(device) else []), "torch"]

    return pick_backend("packed causal conv1d", "CD_FAST_CONV", CONV_BACKENDS, available, device)


def select_delta_rule_backend(device: torch.device, dtype: torch.dtype) -> str:
    """ "fla" on CUDA in bf16/fp16 when flash-linear-attention imports, else "torch" (exact, one
    sequence at a time); CD_FAST_DELTA_RULE forces one."""
    device = torch.device(device)

    def available() -> list[str]:
        fla_ok = (
            device.type == "cuda"
            and dtype in (torch.bfloat16, torch.float16)
            and _fla_chunk_gated_delta_rule() is not None
        )
        return [*(["fla"] if fla_ok else []), "torch"]

    return pick_backend(
        "packed gated delta rule",
        "CD_FAST_DELTA_RULE",
        DELTA_RULE_BACKENDS,
        available,
        f"{device} in {dtype}",
        slow=("torch",) if device.type == "cuda" else (),
        hint="fla needs a CUDA device, bf16/fp16 and `pip install flash-linear-attention`",
    )


def _packed_conv(original: Callable) -> Callable:
    @functools.wraps(original)
    def causal_conv1d_fn(
        hidden_states: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        activation: str | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is None:
            return original(hidden_states, weight, bias, activation=activation, **kwargs)
        if hidden_states.shape[0] != 1:
            raise ValueError("packed sequences (cu_seq_lens_q) come as one row: batch size 1")
        x = hidden_states[0].transpose(0, 1)  # [D, T] -> [T, D], contiguous for the projection
        if select_conv_backend(x.device) == "triton":
            y = causal_conv1d_varlen(x, weight, bias, cu_seqlens, activation)
        else:
            from cd_fast.kernels.reference import causal_conv1d_varlen_ref

            y = causal_conv1d_varlen_ref(x, weight, bias, cu_seqlens, activation)
        return y.transpose(0, 1)[None]

    causal_conv1d_fn.cd_fast_original = original
    return causal_conv1d_fn


def gated_delta_rule_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    cu_seqlens: torch.Tensor,
    torch_rule: Callable,
    use_qk_l2norm_in_kernel: bool = False,
) -> torch.Tensor:
    """The chunked gated delta rule over packed sequences, each starting from a zero state.

    Args:
        query, key: [1, T, Hk, Dk]; value: [1, T, Hv, Dv]; g (log decay), beta: [1, T, Hv].
        cu_seqlens: [N + 1] sequence boundaries.
        torch_rule: transformers' torch implementation, run per sequence on the torch backend.

    Returns:
        [1, T, Hv, Dv] in query's dtype.
    """
    backend = select_delta_rule_backend(query.device, query.dtype)
    if backend == "fla":
        out, _ = _fla_chunk_gated_delta_rule()(
            query,
            key,
            value,
            g=g,
            beta=beta,
            initial_state=None,
            output_final_state=False,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens.to(torch.int64),
        )
        return out
    pieces = []
    for start, end in itertools.pairwise(cu_seqlens.tolist()):  # host sync: the slow path
        part, _ = torch_rule(
            query[:, start:end],
            key[:, start:end],
            value[:, start:end],
            g=g[:, start:end],
            beta=beta[:, start:end],
            initial_state=None,
            output_final_state=False,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        )
        pieces.append(part)
    return torch.cat(pieces, dim=1)


def _packed_delta_rule(original: Callable) -> Callable:
    torch_rule = inspect.unwrap(original)  # transformers' torch function under its hub wrappers

    @functools.wraps(original)
    def torch_chunk_gated_delta_rule(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        g: torch.Tensor,
        beta: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cu_seqlens = kwargs.get("cu_seqlens")
        if cu_seqlens is None:
            return original(query, key, value, g, beta, *args, **kwargs)
        if args or kwargs.get("initial_state") is not None or kwargs.get("output_final_state"):
            raise ValueError(
                "packed sequences (cu_seqlens) run without a recurrent-state cache; generate "
                "unpacked"
            )
        out = gated_delta_rule_varlen(
            query,
            key,
            value,
            g,
            beta,
            cu_seqlens,
            torch_rule,
            use_qk_l2norm_in_kernel=bool(kwargs.get("use_qk_l2norm_in_kernel", False)),
        )
        return out, None

    torch_chunk_gated_delta_rule.cd_fast_original = original
    return torch_chunk_gated_delta_rule


@functools.cache
def _patch_modeling(module_name: str) -> None:
    modeling = importlib.import_module(module_name)
    for name, wrap in (
        ("causal_conv1d_fn", _packed_conv),
        ("torch_chunk_gated_delta_rule", _packed_delta_rule),
    ):
        current = getattr(modeling, name, None)
        if current is None:
            raise UnpackableModelError(
                f"{module_name} has no {name}: this transformers version's Gated-DeltaNet is not "
                "the one cd_fast packs; pin transformers 5.x or train unpacked"
            )
        if not hasattr(current, "cd_fast_original"):
            setattr(modeling, name, wrap(current))
    logger.info("cd_fast: packed Gated-DeltaNet enabled for %s", module_name)


def _linear_mixers(model: nn.Module) -> list[str]:
    """Names of the token mixers outside attention: layer types that are not attention, and
    depthwise Conv1d modules (the short convolutions of Mamba, Gated-DeltaNet, LFM2...)."""
    found = []
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    layer_types = getattr(text_config, "layer_types", None) or []
    found += sorted({t for t in layer_types if t not in ATTENTION_LAYER_TYPES})
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d) and module.groups == module.in_channels > 1:
            found.append(name)
            break
    return found


def enable_packing(model: nn.Module) -> str | None:
    """Make `model` exact on packed batches, or refuse it.

    Returns the family name when the model has Gated-DeltaNet layers now routed through the
    packed conv and delta rule, None for a model whose only token mixer is attention (the
    varlen attention keeps those apart). Raises UnpackableModelError for any other hybrid.
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    module_name = type(lm).__module__
    family = PACKABLE_MODELING.get(module_name.rsplit(".", 1)[-1].removeprefix("modeling_"))
    mixers = _linear_mixers(lm)
    stateful = bool(getattr(lm, "_is_stateful", False))
    if family is not None:
        _patch_modeling(module_name)
        return family
    if mixers or stateful:
        what = ", ".join(mixers) or "recurrent state"
        supported = ", ".join(PACKABLE_MODELING.values())
        raise UnpackableModelError(
            f"{type(lm).__name__} mixes tokens outside attention ({what}), which cd_fast cannot "
            f"keep apart in packed batches; supported hybrids: {supported}. Train or score an "
            "attention-only or supported model"
        )
    return None
