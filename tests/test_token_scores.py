"""The fused token-scoring kernel (Triton interpreter on CPU) against the float64 reference."""

import importlib

import pytest
import torch

from cd_fast.kernels import token_scores
from cd_fast.kernels.reference import token_scores_ref
from cd_fast.kernels.token_scores import cpu_chunk_rows

module = importlib.import_module("cd_fast.kernels.token_scores")

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


@pytest.fixture(autouse=True)
def poisoned_outputs(poison_outputs, triton_interpreter):
    poison_outputs(float("nan"))


@pytest.mark.parametrize("tokens", [1, 37, 257])
@pytest.mark.parametrize("vocab", [97, 1003, 5003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference(tokens, vocab, dtype, assert_close):
    generator = torch.Generator().manual_seed(tokens * 7919 + vocab)
    hidden = (torch.randn(tokens, 64, generator=generator) * 2).to(dtype)
    weight = (torch.randn(vocab, 64, generator=generator) / 4).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[::5] = -100
    got = token_scores(hidden, weight, targets, chunk_size=16)
    want = token_scores_ref(hidden, weight, targets)
    assert got.surprisal.dtype == got.entropy.dtype == torch.float32
    assert_close("surprisal", want.surprisal, got.surprisal, TOLERANCE[dtype])
    assert_close("entropy", want.entropy, got.entropy, TOLERANCE[dtype])
    assert (got.surprisal[::5] == 0).all() and (got.entropy[::5] == 0).all()


@pytest.mark.parametrize("tokens,vocab,size", [(1, 97, 64), (37, 1003, 48), (130, 5003, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_matches_float64_reference(tokens, vocab, size, dtype, assert_close):
    """The fused GEMM-epilogue kernel: odd T, V and H (masked tiles), ignored rows, small tiles
    so that rows span several token tiles and several groups."""
    generator = torch.Generator().manual_seed(tokens + vocab)
    hidden = (torch.randn(tokens, size, generator=generator) * 2).to(dtype)
    weight = (torch.randn(vocab, size, generator=generator) / 4).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[1::5] = -100
    config = module.FusedConfig(
        block_t=16,
        block_v=64,
        block_h=16,
        num_warps=4,
        num_stages=2,
        group_bytes=2 * 16 * size * hidden.element_size(),
    )
    got = token_scores(hidden, weight, targets, method="fused", fused_config=config)
    want = token_scores_ref(hidden, weight, targets)
    assert_close("surprisal", want.surprisal, got.surprisal, TOLERANCE[dtype])
    assert_close("entropy", want.entropy, got.entropy, TOLERANCE[dtype])
    assert (got.surprisal[1::5] == 0).all() and (got.entropy[1::5] == 0).all()


def test_fused_statistics_chunks_and_method_choice(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(70, 32, generator=generator), torch.randn(300, 32)
    targets = torch.randint(0, 300, (70,), generator=generator)
    config = module.FusedConfig(16, 64, 16, 4, 2)
    small = module.token_scores_fused_fwd(hidden, weight, targets, config, max_stats_bytes=1)
    whole = token_scores(hidden, weight, targets, method="fused", fused_config=config)
    assert torch.allclose(small.surprisal, whole.surprisal)
    assert torch.allclose(small.entropy, whole.entropy)
    with pytest.raises(ValueError, match="method must be one of"):
        token_scores(hidden, weight, targets, method="bogus")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        token_scores(hidden, weight, targets, method="fused")


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


def test_torch_fallback_without_interpreter(monkeypatch, caplog, assert_close):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("cd_fast.runtime._warned", set())  # warn once more
    hidden, weight = torch.randn(9, 16), torch.randn(40, 16)
    targets = torch.tensor([0, 5, -100, 39, 1, 2, 3, 4, 5])
    with caplog.at_level("INFO"):
        got = token_scores(hidden, weight, targets)
    # expected on the CPU: said once, at info level, not as a warning
    (record,) = [r for r in caplog.records if "lm_head rows: Triton needs" in r.getMessage()]
    assert record.levelname == "INFO" and "using the torch path on cpu" in record.getMessage()
    want = token_scores_ref(hidden, weight, targets)
    assert_close("surprisal", want.surprisal, got.surprisal, 1e-5)
    assert_close("entropy", want.entropy, got.entropy, 1e-5)
    # extreme rows (one logit far above the rest, or all equal) and chunks of 1 and 2 rows
    hidden = torch.tensor([[100.0], [-100.0], [0.0]])
    weight = torch.tensor([[1.0], [-1.0], [0.5]])
    targets = torch.tensor([1, 0, 2])
    want = token_scores_ref(hidden, weight, targets)
    for chunk_size in (1, 2):
        got = token_scores(hidden, weight, targets, chunk_size=chunk_size)
        assert_close("surprisal", want.surprisal, got.surprisal, 1e-5)
        assert_close("entropy", want.entropy, got.entropy, 1e-5)


def test_cpu_chunks_are_cache_sized_unless_the_head_is_reread_too_often():
    assert cpu_chunk_rows(10_000, 49_152, 64) == (8 << 20) // (4 * 49_152)  # 42 rows, 8 MiB
    assert cpu_chunk_rows(10_000, 151_936, 896) == 448  # H / 2: 13 rows would reread the head
    assert cpu_chunk_rows(5, 151_936, 896) == 5


def test_bad_shapes():
    with pytest.raises(ValueError, match="hidden \\[T, H\\]"):
        token_scores(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be"):
        token_scores(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="targets must be in"):
        token_scores(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([0, 5]))


def reference_in_chunks(hidden, weight, targets, rows=1024):
    """The float64 reference, a chunk of rows at a time (the full [T, V] would not fit)."""
    parts = [
        token_scores_ref(hidden[i : i + rows], weight, targets[i : i + rows])
        for i in range(0, hidden.shape[0], rows)
    ]
    return module.TokenScores(*(torch.cat(p) for p in zip(*parts, strict=True)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "tokens,size,dtype,method",
    [
        (16384, 1536, torch.bfloat16, "fused"),  # the scorer's real shape: Qwen2.5-1.5B head
        (16384, 1536, torch.bfloat16, "split"),
        (4097, 896, torch.float16, "fused"),
        (4097, 896, torch.float32, "split"),
        (37, 4096, torch.bfloat16, "fused"),
    ],
)
@pytest.mark.parametrize("config", sorted(module.FUSED_CONFIGS))
def test_matches_reference_on_gpu(tokens, size, dtype, method, config, assert_close):
    if method != "fused" and config != module.DEFAULT_FUSED:
        pytest.skip("the tile shape only matters to the fused method")
    generator = torch.Generator(device="cuda").manual_seed(tokens + size)
    vocab = 151936
    hidden = torch.randn(tokens, size, device="cuda", generator=generator).to(dtype)
    weight = (torch.randn(vocab, size, device="cuda", generator=generator) / 30).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), device="cuda", generator=generator)
    targets[::3] = -100
    got = token_scores(
        hidden, weight, targets, method=method, fused_config=module.FUSED_CONFIGS[config]
    )
    want = reference_in_chunks(hidden, weight, targets)
    assert_close("surprisal", want.surprisal, got.surprisal, TOLERANCE[dtype])
    assert_close("entropy", want.entropy, got.entropy, TOLERANCE[dtype])
    assert (got.surprisal[::3] == 0).all()
