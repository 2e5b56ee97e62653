"""Varlen causal attention for packed batches, fastest backend first, wired into transformers.

Backends, in the order `select_backend` tries them:
  fa4    FlashAttention-4 (`flash_attn.cute.flash_attn_varlen_func`, pip `flash-attn-4`), Hopper and
         Blackwell; the fastest on an H100 (bench/results/attention.md). Native GQA.
  fa2    classic flash-attn `flash_attn_varlen_func`, when installed. Native GQA.
  torch  `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10); causal is `is_causal=True` or
         `window_size=(-1, 0)` depending on the release, GQA native where `enable_gqa` exists.
  sdpa   `scaled_dot_product_attention` over padded groups of similar-length sequences: CPU,
         or GPUs without the above.
`CD_FAST_ATTN=fa4|fa2|torch|sdpa` forces one. The choice is logged once per device.

`register()` adds "cd_fast_varlen" to transformers' AttentionInterface and AttentionMaskInterface.
Its mask function never builds a [T, T] mask: it hands the 2D padding mask (or None) through,
and the attention reads sequence boundaries from `cu_seq_lens_q` (PackedBatch.model_kwargs), or
else unpads a 2D padding mask, or else derives them from position_ids (a host sync, logged once).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cd_fast.kernels.outputs import HOST_CU_SEQLENS, STATIC_SHAPES
from cd_fast.runtime import pick_backend, warn_once

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "cd_fast_varlen"
BACKENDS = ("fa4", "fa2", "torch", "sdpa")


def _fa4() -> Callable | None:
    try:
        from flash_attn.cute import flash_attn_varlen_func
    except Exception:  # the CuTe DSL raises more than ImportError when its runtime is missing
        return None
    return flash_attn_varlen_func


def _fa2() -> Callable | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:
        return None
    return flash_attn_varlen_func


def _torch_varlen() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _torch_varlen_params() -> frozenset[str]:
    fn = _torch_varlen()
    return frozenset(inspect.signature(fn).parameters) if fn is not None else frozenset()


def available_backends(device: torch.device) -> list[str]:
    """Backends that can run on `device`, fastest first."""
    found = []
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 9 and _fa4() is not None:
            found.append("fa4")
        if major >= 8 and _fa2() is not None:
            found.append("fa2")
        if major >= 8 and _torch_varlen() is not None:
            found.append("torch")
    found.append("sdpa")
    return found


@torch.compiler.assume_constant_result  # compiled blocks take the choice as a constant
def select_backend(device: torch.device) -> str:
    """The backend for `device`: CD_FAST_ATTN when set, else the fastest available."""
    device = torch.device(device)
    return pick_backend(
        "varlen attention", "CD_FAST_ATTN", BACKENDS, lambda: available_backends(device), device
    )


# A sequence joins a padded SDPA group when padding it to the group's longest at most multiplies
# its attention area (length^2) by this: one call per group instead of one per sequence, and
# never the quadratic cost of padding a short sequence to a long one.
PADDED_AREA_LIMIT = 2.0


def padding_groups(lengths: list[int], limit: float = PADDED_AREA_LIMIT) -> list[list[int]]:
    """Sequence indices, longest first, in groups run as one padded batch each: every member
    has longest^2 <= limit * length^2 (empty sequences are left out)."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[groups[-1][0]] ** 2 <= limit * lengths[i] ** 2:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _padded(
    x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int, longest: int
) -> torch.Tensor:
    """Rows `src` of packed x [T, H, D] placed at rows `dst` of a zero [n * longest] buffer,
    as [n, H, longest, D]."""
    buffer = x.new_zeros(n * longest, *x.shape[1:]).index_copy(0, dst, x.index_select(0, src))
    return buffer.view(n, longest, *x.shape[1:]).transpose(1, 2)


def _sdpa_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: list[int],
    scale: float | None,
    causal: bool,
    window: int | None,
) -> torch.Tensor:
    """Packed sequences in padded groups of similar length, one SDPA call per group: on a CPU
    the per-call cost outweighs the padding."""
    starts, lengths = cu_seqlens[:-1], [b - a for a, b in itertools.pairwise(cu_seqlens)]
    gqa = q.shape[1] != k.shape[1]
    rows, outputs = [], []
    for group in padding_groups(lengths):
        longest, n = lengths[group[0]], len(group)
        # the group's token rows in the pack and their places in the padded [n * longest] rows
        src = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in group])
        dst = torch.cat([torch.arange(lengths[i]) + j * longest for j, i in enumerate(group)])
        src, dst = src.to(q.device), dst.to(q.device)

        mask = None
        if window is not None or not causal:
            i = torch.arange(longest, device=q.device)
            distance = i[:, None] - i[None, :]
            mask = (distance >= 0) if causal else torch.ones_like(distance, dtype=torch.bool)
            if window is not None:
                mask = mask & (distance.abs() < window)
            if not causal:  # padded keys are in reach: each sequence sees its own keys only
                key_valid = (
                    i[None, :] < torch.tensor([lengths[g] for g in group], device=q.device)[:, None]
                )
                mask = mask[None, None] & key_valid[:, None, None, :]
        q_g, k_g, v_g = (_padded(x, src, dst, n, longest) for x in (q, k, v))
        o = F.scaled_dot_product_attention(
            q_g,
            k_g,
            v_g,
            attn_mask=mask,
            is_causal=causal and mask is None,
            scale=scale,
            enable_gqa=gqa,
        )
        rows.append(src)
        outputs.append(o.transpose(1, 2).reshape(n * longest, *q.shape[1:]).index_select(0, dst))
    out = q.new_zeros(q.shape)  # rows past cu_seqlens[-1], if any, stay zero
    return out.index_copy(0, torch.cat(rows), torch.cat(outputs)) if outputs else out


def _sdpa_static(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None,
    causal: bool,
    window: int | None,
) -> torch.Tensor:
    """The whole row in one SDPA call under a block-diagonal mask built on the device from
    cu_seqlens: fixed shapes and no host values (what torch.compile of a static-shape step
    needs); O(T^2) memory and work, for CPU runs."""
    tokens = q.shape[0]
    index = torch.arange(tokens, device=q.device)
    sequence = torch.searchsorted(cu_seqlens[1:].to(torch.int64), index, right=True)
    distance = index[:, None] - index[None, :]
    mask = sequence[:, None] == sequence[None, :]
    if causal:
        mask = mask & (distance >= 0)
    if window is not None:
        mask = mask & (distance.abs() < window)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    causal: bool = True,
    window: int | None = None,
    softcap: float | None = None,
    backend: str | None = None,
    host_cu_seqlens: list[int] | None = None,
    static: bool = False,
) -> torch.Tensor:
    """Attention over packed sequences.

    Args:
        q: [T, Hq, D]; k, v: [T, Hkv, D] with Hq a multiple of Hkv (GQA).
        cu_seqlens: int32 [B + 1] sequence boundaries; max_seqlen: longest sequence (host int).
        host_cu_seqlens: the same boundaries as host ints, when the caller has them: the sdpa
            backend splits the sequences on the host and would read them back otherwise.
        static: a static-shape batch (kernels.StaticShape): the sdpa backend runs one masked
            call over the whole row instead of splitting it on the host.
        window: sliding-window size (tokens attended, the current one included), or None.
        softcap: tanh soft-capping of the scores (fa2/fa4 only).

    Returns:
        [T, Hq, D] in q's dtype.
    """
    backend = backend or select_backend(q.device)
    if softcap and backend not in ("fa4", "fa2"):
        raise ValueError(f"softcap needs the fa2 or fa4 backend, not {backend}")
    left = -1 if window is None else window - 1
    if backend in ("fa4", "fa2"):
        # Arguments as each project's docs give them; window/softcap only when asked for.
        options = {"softmax_scale": scale, "causal": causal}
        if window is not None:
            options["window_size"] = (left, 0 if causal else left)
        if softcap:
            options["softcap"] = softcap
        fn = _fa4() if backend == "fa4" else _fa2()
        out = fn(
            q,
            k,
            v,
            cu_seqlens_q=cu_seqlens,
            cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen,
            **options,
        )
        return out[0] if isinstance(out, tuple) else out
    if backend == "torch":
        params = _torch_varlen_params()
        options: dict[str, Any] = {"scale": scale}
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in params:
                options["enable_gqa"] = True
            else:
                repeat = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        if "is_causal" in params and window is None:
            options["is_causal"] = causal
        else:
            options["window_size"] = (left, 0 if causal else left)
        return _torch_varlen()(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **options)
    if backend == "sdpa" and static:
        return _sdpa_static(q, k, v, cu_seqlens, scale, causal, window)
    if backend == "sdpa":
        bounds = host_cu_seqlens if host_cu_seqlens is not None else cu_seqlens.tolist()
        return _sdpa_varlen(q, k, v, bounds, scale, causal, window)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")


def _cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    total = torch.tensor([flat.numel()], device=flat.device)
    cu_seqlens = torch.cat([starts, total]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, Hq, S, D], key/value [B, Hkv, S, D] ->
    ([B, S, Hq, D], None)."""
    if dropout:
        raise ValueError("cd_fast_varlen attention does not implement attention dropout")
    batch, heads, seq, dim = query.shape
    if key.shape[2] != seq:
        raise ValueError(
            "cd_fast_varlen runs packed training and scoring without a KV cache; for generation "
            "switch the model to sdpa (model.set_attn_implementation('sdpa'))"
        )
    causal = module.is_causal if is_causal is None else is_causal
    q, k, v = (x.transpose(1, 2).reshape(batch * seq, x.shape[1], dim) for x in (query, key, value))

    cu_seqlens, max_seqlen = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    keep = None  # token rows to run when unpadding
    if cu_seqlens is None:
        if attention_mask is not None and attention_mask.dim() == 2 and not attention_mask.all():
            warn_once(logger, "cd_fast_varlen: unpadding a 2D padding mask (host sync)")
            lengths = attention_mask.sum(-1, dtype=torch.int32)
            keep = attention_mask.reshape(-1).nonzero().reshape(-1)
            cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            max_seqlen = int(lengths.max())
            q, k, v = q[keep], k[keep], v[keep]
        elif batch == 1 and kwargs.get("position_ids") is not None:
            warn_once(
                logger,
                "cd_fast_varlen: deriving cu_seqlens from position_ids (host sync); pass "
                "PackedBatch.model_kwargs() to avoid it",
            )
            cu_seqlens, max_seqlen = _cu_seqlens_from_position_ids(kwargs["position_ids"])
        else:
            cu_seqlens = torch.arange(
                0, (batch + 1) * seq, seq, dtype=torch.int32, device=query.device
            )
            max_seqlen = seq
    elif max_seqlen is None:
        raise ValueError("cu_seq_lens_q was given without max_length_q")
    max_seqlen = int(max_seqlen)  # a host int: never read back from the device here
    host_cu_seqlens = kwargs.get(HOST_CU_SEQLENS) if keep is None else None

    out = varlen_attention(
        q,
        k,
        v,
        cu_seqlens.to(torch.int32),
        max_seqlen,
        scale=scaling,
        causal=causal,
        window=sliding_window,
        softcap=softcap,
        host_cu_seqlens=host_cu_seqlens,
        static=bool(kwargs.get(STATIC_SHAPES)),
    )
    if keep is not None:
        full = out.new_zeros(batch * seq, heads, dim)
        full[keep] = out
        out = full
    return out.reshape(batch, seq, heads, dim), None


def attention_mask_passthrough(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """transformers mask function for cd_fast_varlen: never a [T, T] mask, only the 2D padding
    mask (None when there is none)."""
    return attention_mask


@functools.cache
def register() -> str:
    """Register "cd_fast_varlen" with transformers; returns the name for `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, attention_mask_passthrough)
    return ATTN_IMPLEMENTATION
