"""The Triton pack kernel (under the interpreter) against the torch reference."""

import numpy as np
import pytest
import torch

from cd_fast.kernels import IGNORE_INDEX
from cd_fast.kernels.pack import TokenStore, pack_sequences
from cd_fast.kernels.reference import pack_from_store_ref, pack_sequences_ref

SENTINEL = -7777


@pytest.fixture(autouse=True)
def poisoned_outputs(poison_outputs, triton_interpreter):
    poison_outputs(SENTINEL)


def assert_batches_equal(got, want):
    for name in ("input_ids", "labels", "position_ids", "cu_seqlens"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name
        assert not (a == SENTINEL).any(), name
    assert got.max_seqlen == want.max_seqlen
    assert got.num_label_tokens == want.num_label_tokens
    assert got.seq_lengths == want.seq_lengths


def random_sequences(rng, count, max_len, vocab=50_000):
    lengths = rng.integers(1, max_len + 1, size=count)
    return [rng.integers(0, vocab, size=n) for n in lengths]


@pytest.mark.parametrize("count,max_len", [(1, 1), (1, 37), (3, 37), (37, 200), (5, 4097)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_kernel_matches_reference(count, max_len, dtype):
    rng = np.random.default_rng(count * 1000 + max_len)
    sequences = random_sequences(rng, count, max_len)
    prompts = [int(rng.integers(0, len(s) + 2)) for s in sequences]  # 0 .. past the end
    store = TokenStore(sequences, prompts, dtype=dtype)
    order = rng.permutation(count)
    got = store.pack(order)
    want = pack_from_store_ref(
        store.tokens, store.offsets[order], store.lengths[order], store.prompt_lengths[order]
    )
    assert_batches_equal(got, want)


def test_semantics_on_a_small_batch():
    batch = pack_sequences([[5, 6, 7, 8], [1], [9, 10, 11]], prompt_lengths=[2, 0, 5])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 1, 9, 10, 11]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 0, 1, 2]]
    # Prompt tokens and every sequence's first token carry no loss.
    assert batch.labels.tolist() == [[-100, -100, 7, 8, -100, -100, -100, -100]]
    assert batch.cu_seqlens.tolist() == [0, 4, 5, 8] and batch.cu_seqlens.dtype == torch.int32
    assert (batch.max_seqlen, batch.num_label_tokens, batch.seq_lengths) == (4, 2, [4, 1, 3])
    assert batch.num_label_tokens == int((batch.labels != IGNORE_INDEX).sum())
    assert_batches_equal(batch, pack_sequences_ref([[5, 6, 7, 8], [1], [9, 10, 11]], [2, 0, 5]))


def test_slices_of_samples():
    store = TokenStore([list(range(100, 110)), list(range(200, 206))], prompt_lengths=[3, 0])
    batch = store.pack([0, 0, 1], starts=[0, 6, 2], stops=[6, 10, 6])
    assert batch.input_ids.tolist() == [
        [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 202, 203, 204, 205]
    ]
    assert batch.labels[0, :6].tolist() == [-100, -100, -100, 103, 104, 105]
    assert batch.labels[0, 6:10].tolist() == [-100, 107, 108, 109]  # a slice starts fresh
    assert batch.position_ids[0, 6:10].tolist() == [0, 1, 2, 3]


def test_cpu_without_interpreter_falls_back_to_reference(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("cd_fast.runtime._warned", set())  # warn once more
    with caplog.at_level("INFO"):
        batch = pack_sequences([[1, 2, 3], [4, 5]], [1, 0])
    # expected on the CPU: said once, at info level
    (record,) = [r for r in caplog.records if "pack_sequences: Triton needs" in r.getMessage()]
    assert record.levelname == "INFO" and "torch path on cpu" in record.getMessage()
    assert_batches_equal(batch, pack_sequences_ref([[1, 2, 3], [4, 5]], [1, 0]))


def test_bad_input():
    with pytest.raises(ValueError, match="at least one token"):
        pack_sequences([[1, 2], []])
    with pytest.raises(ValueError, match="prompt_lengths has 1 entries for 2"):
        pack_sequences([[1], [2]], prompt_lengths=[0])
    with pytest.raises(ValueError, match="1-D sequence of token ids"):
        pack_sequences([[1.5, 2.0]])
    with pytest.raises(ValueError, match="token ids must lie"):
        TokenStore([[2**31]], dtype=torch.int32)
    store = TokenStore([[1, 2, 3]])
    with pytest.raises(IndexError):
        store.pack([1])
    with pytest.raises(ValueError, match="start < stop"):
        store.pack([0], starts=[2], stops=[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernel_matches_reference_on_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rng = np.random.default_rng(11)
    sequences = random_sequences(rng, 64, 5000)
    prompts = [int(rng.integers(0, len(s) + 2)) for s in sequences]
    for dtype in (torch.int64, torch.int32):
        store = TokenStore(sequences, prompts, device="cuda", dtype=dtype)
        order = rng.permutation(len(sequences))
        got = store.pack(order)
        want = pack_from_store_ref(
            store.tokens, store.offsets[order], store.lengths[order], store.prompt_lengths[order]
        )
        assert_batches_equal(got, want)
