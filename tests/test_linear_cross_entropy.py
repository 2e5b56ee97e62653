"""cd_fast's fused LM-head loss (`linear_cross_entropy`: the Triton row reduction under the
interpreter, and the torch path) against the float64 reference: loss, both gradients."""

import importlib
import logging

import pytest
import torch

from cd_fast.kernels import linear_cross_entropy
from cd_fast.kernels.reference import linear_cross_entropy_ref

module = importlib.import_module("cd_fast.kernels.linear_cross_entropy")

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def poisoned_outputs(poison_outputs, triton_interpreter):
    poison_outputs(float("nan"))


def inputs(tokens, vocab, size, dtype, seed=0, ignore_every=5):
    generator = torch.Generator().manual_seed(seed + tokens * 31 + vocab)
    hidden = (torch.randn(tokens, size, generator=generator) * 2).to(dtype)
    weight = (torch.randn(vocab, size, generator=generator) / 4).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    if ignore_every:
        targets[1::ignore_every] = -100
    return hidden.requires_grad_(), weight.requires_grad_(), targets


def reference(hidden, weight, targets, scale):
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    loss = linear_cross_entropy_ref(h64, w64, targets)
    (loss * scale).backward()
    return loss.detach(), h64.grad, w64.grad


def check(hidden, weight, targets, assert_close, max_chunk_bytes=1 << 30, scale=0.5):
    loss = linear_cross_entropy(hidden, weight, targets, max_chunk_bytes)
    (loss * scale).backward()
    want, want_h, want_w = reference(hidden, weight, targets, scale)
    tol = TOLERANCE[hidden.dtype]
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert hidden.grad.dtype == hidden.dtype and weight.grad.dtype == weight.dtype
    assert_close("loss", want, loss.detach(), tol)
    assert_close("grad hidden", want_h, hidden.grad, tol)
    assert_close("grad weight", want_w, weight.grad, tol)


@pytest.mark.parametrize("tokens", [1, 37, 257])
@pytest.mark.parametrize("vocab", [97, 5003])  # 5003: not a multiple of any block
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference(tokens, vocab, dtype, assert_close):
    hidden, weight, targets = inputs(tokens, vocab, 48, dtype)
    if tokens == 1:
        targets[0] = vocab - 1  # the last column of the last (partial) block
    # a chunk of ~16 rows: several chunks, the last one short
    check(hidden, weight, targets, assert_close, max_chunk_bytes=16 * vocab * 6)


def test_chunk_budget_does_not_change_the_result():
    hidden, weight, targets = inputs(70, 300, 32, torch.float32)
    results = []
    for budget in (1, 300 * 4 * 7, 1 << 30):  # one row per chunk, 7 rows, all at once
        hidden.grad = weight.grad = None
        loss = linear_cross_entropy(hidden, weight, targets, budget)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    for loss, grad_h, grad_w in results[1:]:
        assert torch.allclose(loss, results[0][0], rtol=1e-6)
        assert torch.allclose(grad_h, results[0][1], atol=1e-6)
        assert torch.allclose(grad_w, results[0][2], atol=1e-6)


def test_tied_embeddings(assert_close):
    """The LM head is the embedding: its gradient sums the lookup's and the loss's."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(211, 24)
    tokens = torch.randint(0, 211, (40,))
    targets = torch.roll(tokens, -1)
    targets[-1] = -100
    hidden = torch.tanh(embedding(tokens) * 3)
    linear_cross_entropy(hidden, embedding.weight, targets).backward()
    ours = embedding.weight.grad.clone()
    w64 = embedding.weight.detach().double().requires_grad_()
    h64 = torch.tanh(torch.nn.functional.embedding(tokens, w64) * 3)
    linear_cross_entropy_ref(h64, w64, targets).backward()
    assert_close("tied grad", w64.grad, ours, 1e-5)


def test_ignored_rows_frozen_head_and_no_grad():
    hidden, weight, targets = inputs(5, 11, 8, torch.float32, ignore_every=0)
    weight = weight.detach()  # frozen (LoRA): no [V, H] gradient is formed
    loss = linear_cross_entropy(hidden, weight, torch.full((5,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(hidden.grad, torch.zeros_like(hidden))
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, targets)
    assert torch.allclose(value.double(), linear_cross_entropy_ref(hidden, weight, targets))
    with pytest.raises(ValueError, match="targets must be"):
        linear_cross_entropy(hidden, weight, targets[:4])
    with pytest.raises(RuntimeError, match="targets must be in"):
        linear_cross_entropy(hidden, weight, torch.full((5,), 11))
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        linear_cross_entropy(hidden, weight, targets, 0)


def test_extreme_logits_stay_finite():
    hidden = torch.tensor([[100.0], [-100.0]], requires_grad=True)
    weight = torch.tensor([[1.0], [-1.0], [0.5]], requires_grad=True)
    targets = torch.tensor([1, 0])
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    want = linear_cross_entropy_ref(hidden, weight, targets)
    assert torch.allclose(loss.double(), want, rtol=1e-5)
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_path_without_interpreter(dtype, monkeypatch, caplog, assert_close):
    """The CPU path (no Triton): the same results, said once at info level."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("cd_fast.runtime._warned", set())
    hidden, weight, targets = inputs(37, 1003, 40, dtype)
    with caplog.at_level(logging.INFO):
        check(hidden, weight, targets, assert_close, max_chunk_bytes=10 * 1003 * 6)
    (record,) = [r for r in caplog.records if "lm_head rows: Triton needs" in r.getMessage()]
    assert record.levelname == "INFO"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cd_fast", "liger"])
def test_backends_match_float64_reference_on_gpu(backend, assert_close):
    """Both loss backends on the GPU, bf16, a Qwen-sized vocabulary slice and several chunks."""
    from cd_fast.train.loss import linear_cross_entropy_sum

    if backend == "liger":
        pytest.importorskip("liger_kernel")
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4097, 256, generator=generator).to("cuda", torch.bfloat16)
    weight = (torch.randn(15_003, 256, generator=generator) / 8).to("cuda", torch.bfloat16)
    targets = torch.randint(0, 15_003, (4097,), generator=generator).cuda()
    targets[::7] = -100
    hidden.requires_grad_()
    weight.requires_grad_()
    loss = linear_cross_entropy_sum(hidden, weight, targets, backend, 64 << 20)
    (loss * 0.5).backward()
    want, want_h, want_w = reference(hidden, weight, targets, 0.5)
    assert_close("loss", want, loss.detach(), 1e-2)
    assert_close("grad hidden", want_h, hidden.grad, 2e-2)
    assert_close("grad weight", want_w, weight.grad, 2e-2)
