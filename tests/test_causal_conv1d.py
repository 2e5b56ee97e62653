"""The varlen causal conv1d kernel (Triton under the interpreter) against its float64 reference,
and the reference against transformers' own convolution (its GPU builds: test_kernel_compile)."""

import numpy as np
import pytest
import torch

from cd_fast.kernels import causal_conv1d_varlen
from cd_fast.kernels.reference import causal_conv1d_varlen_ref

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poisoned_outputs(poison_outputs, triton_interpreter):
    poison_outputs(float("nan"))


def boundaries(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def run_both(lengths, channels, dtype, activation, bias, width=4, seed=0):
    """(kernel, float64 reference) outputs and gradients for the same inputs and upstream grad."""
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    x = torch.randn(tokens, channels, generator=generator, dtype=torch.float64)
    weight = torch.randn(channels, width, generator=generator, dtype=torch.float64) / width
    b = torch.randn(channels, generator=generator, dtype=torch.float64) if bias else None
    dy = torch.randn(tokens, channels, generator=generator, dtype=torch.float64)
    cu_seqlens = boundaries(lengths)
    results = []
    for cast, fn in ((dtype, causal_conv1d_varlen), (torch.float64, causal_conv1d_varlen_ref)):
        inputs = [t.to(cast).requires_grad_() if t is not None else None for t in (x, weight, b)]
        y = fn(inputs[0], inputs[1], inputs[2], cu_seqlens, activation)
        y.backward(dy.to(cast))
        results.append([y, *(t.grad if t is not None else None for t in inputs)])
    return results


SHORT = [
    ([1], 40),
    ([2], 40),
    ([3], 40),  # kernel width - 1
    ([37], 130),  # channels past one block, not a multiple of it
    ([1, 2, 3, 37], 40),
    ([3] * 20 + [1], 8),  # many sequences: a deeper binary search
    ([5, 0, 3, 37, 0, 0], 40),  # empty sequences (static shapes pad with them at the end)
]
LONG = [([4097], 8), ([4097, 5, 64], 8)]  # once each (interpreter time): Qwen3.5's fp32 case
CASES = [
    (lengths, channels, dtype, activation, bias)
    for lengths, channels in SHORT
    for dtype in (torch.float32, torch.bfloat16)
    for activation, bias in (("silu", False), ("silu", True), (None, False))
] + [(lengths, channels, torch.float32, "silu", False) for lengths, channels in LONG]


@pytest.mark.parametrize(("lengths", "channels", "dtype", "activation", "bias"), CASES)
def test_kernel_matches_reference(lengths, channels, dtype, activation, bias, assert_close):
    (y, dx, dw, db), (y_ref, dx_ref, dw_ref, db_ref) = run_both(
        lengths, channels, dtype, activation, bias
    )
    tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close("y", y_ref, y, tol)
    assert_close("dx", dx_ref, dx, tol)
    assert_close("dweight", dw_ref, dw, tol)
    if bias:
        assert_close("dbias", db_ref, db, tol)


def test_state_resets_at_every_sequence_start():
    """Changing one sequence changes no other sequence's output."""
    lengths = [5, 3, 9]
    cu_seqlens = boundaries(lengths)
    x = torch.randn(sum(lengths), 16)
    weight = torch.randn(16, 4)
    y = causal_conv1d_varlen(x, weight, None, cu_seqlens, "silu")
    changed = x.clone()
    changed[5:8] += 10.0  # the middle sequence
    y2 = causal_conv1d_varlen(changed, weight, None, cu_seqlens, "silu")
    assert torch.equal(y[:5], y2[:5]) and torch.equal(y[8:], y2[8:])
    assert not torch.allclose(y[5:8], y2[5:8])


def test_reference_is_transformers_convolution_per_sequence():
    """The reference equals transformers' own torch conv (Qwen3.5's) run on each sequence alone,
    and that same conv over the packed row lets sequences see each other: the silent bug that
    transformers' fallback (and the causal-conv1d package without seq_idx) has on packed rows."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import causal_conv1d_fn

    transformers_conv = getattr(causal_conv1d_fn, "cd_fast_original", causal_conv1d_fn)
    lengths = [6, 4, 11]
    x = torch.randn(sum(lengths), 12, dtype=torch.float64)
    weight = torch.randn(12, 4, dtype=torch.float64)
    cu_seqlens = boundaries(lengths)
    alone = torch.cat(
        [
            transformers_conv(x[s:e].t()[None], weight, None, activation="silu")[0].t()
            for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)
        ]
    )
    assert torch.allclose(causal_conv1d_varlen_ref(x, weight, None, cu_seqlens, "silu"), alone)
    packed_row = transformers_conv(x.t()[None], weight, None, activation="silu")[0].t()
    assert not torch.allclose(packed_row, alone)


def test_bad_arguments_are_refused():
    x, weight = torch.randn(5, 8), torch.randn(8, 4)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_varlen(x, weight, activation="gelu")
    with pytest.raises(ValueError, match=r"weight \[D, W\]"):
        causal_conv1d_varlen(x, torch.randn(7, 4))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d_varlen(x, weight, torch.randn(3))


def test_cpu_without_triton_runs_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, weight = torch.randn(9, 8, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    cu_seqlens = boundaries([4, 5])
    got = causal_conv1d_varlen(x, weight, None, cu_seqlens, "silu")
    assert torch.equal(got, causal_conv1d_varlen_ref(x, weight, None, cu_seqlens, "silu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_on_gpu_at_qwen3_5_shape(dtype, assert_close):
    """Qwen3.5-0.8B's conv (6144 channels, width 4) over 16k packed tokens, against float64."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(1500), 0.7, 11), 64, 4096).astype(int).tolist()
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens, channels = sum(lengths), 6144
    x = torch.randn(tokens, channels, device="cuda", generator=generator, dtype=torch.float64)
    weight = torch.randn(channels, 4, device="cuda", generator=generator, dtype=torch.float64)
    dy = torch.randn(tokens, channels, device="cuda", generator=generator, dtype=torch.float64)
    cu_seqlens = boundaries(lengths).cuda()
    got = [t.to(dtype).requires_grad_() for t in (x, weight)]
    y = causal_conv1d_varlen(*got, None, cu_seqlens, "silu")
    y.backward(dy.to(dtype))
    ref = [t.clone().requires_grad_() for t in (x, weight)]
    y_ref = causal_conv1d_varlen_ref(*ref, None, cu_seqlens, "silu")
    y_ref.backward(dy)
    tol = TOLERANCE[dtype]
    assert_close("y", y_ref, y, tol)
    assert_close("dx", ref[0].grad, got[0].grad, tol)
    assert_close("dweight", ref[1].grad, got[1].grad, tol)
