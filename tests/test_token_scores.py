"""The fused token-scoring kernel (Triton interpreter on CPU) against the float64 reference."""

import importlib

import pytest
import torch

from cd_fast.kernels import token_scores
from cd_fast.kernels.reference import token_scores_ref

module = importlib.import_module("cd_fast.kernels.token_scores")

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Outputs start as NaN, so an element the kernel never writes fails the comparison."""

    def empty(size, device):
        return torch.full((size,), float("nan"), dtype=torch.float32, device=device)

    monkeypatch.setattr(module, "_empty", empty)


def relative_error(got, want):
    assert not torch.isnan(got).any()
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("tokens", [1, 37, 257])
@pytest.mark.parametrize("vocab", [97, 1003, 5003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference(tokens, vocab, dtype):
    generator = torch.Generator().manual_seed(tokens * 7919 + vocab)
    hidden = (torch.randn(tokens, 64, generator=generator) * 2).to(dtype)
    weight = (torch.randn(vocab, 64, generator=generator) / 4).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[::5] = -100
    got = token_scores(hidden, weight, targets, chunk_size=16)
    want = token_scores_ref(hidden, weight, targets)
    assert got.surprisal.dtype == got.entropy.dtype == torch.float32
    assert relative_error(got.surprisal, want.surprisal) < TOLERANCE[dtype]
    assert relative_error(got.entropy, want.entropy) < TOLERANCE[dtype]
    assert (got.surprisal[::5] == 0).all() and (got.entropy[::5] == 0).all()


def test_chunking_does_not_change_results():
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(50, 32, generator=generator), torch.randn(300, 32)
    targets = torch.randint(0, 300, (50,), generator=generator)
    whole = token_scores(hidden, weight, targets, chunk_size=50)
    for chunk in (1, 7, 49):
        part = token_scores(hidden, weight, targets, chunk_size=chunk)
        assert torch.allclose(part.surprisal, whole.surprisal, atol=1e-5)
        assert torch.allclose(part.entropy, whole.entropy, atol=1e-5)


def test_extreme_logits_stay_finite():
    hidden = torch.tensor([[100.0], [-100.0]])
    weight = torch.tensor([[1.0], [-1.0], [0.5]])
    got = token_scores(hidden, weight, torch.tensor([1, 0]))
    want = token_scores_ref(hidden, weight, torch.tensor([1, 0]))
    assert torch.isfinite(got.surprisal).all() and torch.isfinite(got.entropy).all()
    assert torch.allclose(got.surprisal.double(), want.surprisal, rtol=1e-5)


def test_torch_fallback_without_interpreter(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(module, "_logged_fallback", False)
    hidden, weight = torch.randn(9, 16), torch.randn(40, 16)
    targets = torch.tensor([0, 5, -100, 39, 1, 2, 3, 4, 5])
    with caplog.at_level("WARNING"):
        got = token_scores(hidden, weight, targets)
    assert "reducing with torch" in caplog.text
    want = token_scores_ref(hidden, weight, targets)
    assert relative_error(got.surprisal, want.surprisal) < 1e-5


def test_bad_shapes():
    with pytest.raises(ValueError, match="hidden \\[T, H\\]"):
        token_scores(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be"):
        token_scores(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="targets must be in"):
        token_scores(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([0, 5]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_on_gpu(dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4097, 896, device="cuda", generator=generator).to(dtype)
    weight = (torch.randn(151936, 896, device="cuda", generator=generator) / 30).to(dtype)
    targets = torch.randint(0, 151936, (4097,), device="cuda", generator=generator)
    targets[::3] = -100
    got = token_scores(hidden, weight, targets)
    want = token_scores_ref(hidden, weight, targets)
    assert relative_error(got.surprisal, want.surprisal) < TOLERANCE[dtype]
    assert relative_error(got.entropy, want.entropy) < TOLERANCE[dtype]
