"""Varlen attention: backends vs a naive reference, and packed HF models (Llama, Qwen2, Qwen3)
equal to running each sequence alone: logits, loss, gradients, no leakage."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from cd_fast.bench.shapes import model_config
from cd_fast.kernels.pack import pack_sequences
from cd_fast.patches.attention import (
    available_backends,
    padding_groups,
    register,
    select_backend,
    varlen_attention,
)

# HF computes RMSNorm and RoPE in float32 even for float64 models, hence 1e-6 there.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 2e-5}


def naive_attention(q, k, v, lengths, causal=True, window=None, scale=None):
    """Dense per-sequence softmax attention in float64."""
    outputs, start = [], 0
    repeat = q.shape[1] // k.shape[1]
    for n in lengths:
        qs = q[start : start + n].double().transpose(0, 1)
        ks = k[start : start + n].double().repeat_interleave(repeat, 1).transpose(0, 1)
        vs = v[start : start + n].double().repeat_interleave(repeat, 1).transpose(0, 1)
        scores = qs @ ks.transpose(1, 2) * (scale or q.shape[-1] ** -0.5)
        i = torch.arange(n)
        distance = i[:, None] - i[None, :]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if causal:
            allowed &= distance >= 0
        if window is not None:
            allowed &= distance.abs() < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        outputs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outputs)


@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 3)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_sdpa_backend_matches_naive(causal, window, heads, kv_heads):
    torch.manual_seed(0)
    lengths = [1, 7, 37, 5]
    total = sum(lengths)
    q = torch.randn(total, heads, 16)
    k, v = torch.randn(total, kv_heads, 16), torch.randn(total, kv_heads, 16)
    cu = torch.tensor([0, 1, 8, 45, 50], dtype=torch.int32)
    out = varlen_attention(q, k, v, cu, 37, causal=causal, window=window, backend="sdpa")
    want = naive_attention(q, k, v, lengths, causal, window)
    assert ((out.double() - want).norm() / want.norm()) < 1e-6


def test_padding_groups_bound_the_padded_area():
    lengths = [1, 7, 0, 37, 5, 36, 20, 300, 2]
    groups = padding_groups(lengths)
    assert sorted(i for g in groups for i in g) == [i for i, n in enumerate(lengths) if n]
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert lengths[group[0]] == longest
        assert all(longest**2 <= 2.0 * lengths[i] ** 2 for i in group)
    assert [[lengths[i] for i in g] for g in groups] == [[300], [37, 36], [20], [7, 5], [2], [1]]


@pytest.mark.parametrize("causal,window", [(True, None), (False, None), (True, 4)])
def test_sdpa_backend_gradients_across_padded_groups(causal, window):
    torch.manual_seed(0)
    lengths = [3, 40, 1, 38, 9, 21, 20, 6]  # several groups, out of length order
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lengths), 6, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(sum(lengths), 2, 8, dtype=torch.float64, requires_grad=True) for _ in "kv")
    weight = torch.randn(sum(lengths), 6, 8, dtype=torch.float64)
    out = varlen_attention(q, k, v, cu, 40, causal=causal, window=window, backend="sdpa")
    got = torch.autograd.grad((out * weight).sum(), (q, k, v))
    want_out = naive_attention(q, k, v, lengths, causal, window)
    want = torch.autograd.grad((want_out * weight).sum(), (q, k, v))
    torch.testing.assert_close(out, want_out)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_backend_selection_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    assert available_backends(cpu) == ["sdpa"]
    assert select_backend(cpu) == "sdpa"
    monkeypatch.setenv("CD_FAST_ATTN", "fa4")
    with pytest.raises(RuntimeError, match="not available"):
        select_backend(cpu)
    monkeypatch.setenv("CD_FAST_ATTN", "bogus")
    with pytest.raises(ValueError, match="expected one of"):
        select_backend(cpu)
    with pytest.raises(ValueError, match="softcap"):
        varlen_attention(
            *(torch.zeros(2, 1, 4),) * 3, torch.tensor([0, 2]), 2, softcap=5.0, backend="sdpa"
        )


CONFIGS = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}


def tiny_model(arch, dtype):
    config = CONFIGS[arch](
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=register())
    return model.to(dtype)


def sequences_and_prompts(seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths, prompts = [9, 1, 23, 4, 16], [3, 0, 5, 4, 0]
    return [torch.randint(0, 97, (n,), generator=generator) for n in lengths], prompts


def per_sequence(model, sequences, prompts):
    """Each sequence alone through the eager attention: logits, summed loss, label count."""
    model.set_attn_implementation("eager")
    try:
        logits, loss_sum, labels_total = [], 0.0, 0
        for tokens, prompt in zip(sequences, prompts, strict=True):
            labels = tokens.clone()
            labels[: max(prompt, 1)] = -100
            count = int((labels != -100).sum())
            out = model(input_ids=tokens[None], labels=labels[None])
            logits.append(out.logits[0])
            if count:
                loss_sum = loss_sum + out.loss * count
            labels_total += count
        return torch.cat(logits), loss_sum / labels_total
    finally:
        model.set_attn_implementation(register())


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_equals_per_sequence(arch, dtype, assert_close):
    model = tiny_model(arch, dtype)
    sequences, prompts = sequences_and_prompts()
    batch = pack_sequences(sequences, prompts)

    packed = model(**batch.model_kwargs(), labels=batch.labels)
    packed.loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits, loss = per_sequence(model, sequences, prompts)
    loss.backward()
    tol = TOLERANCE[dtype]
    assert_close("logits", logits, packed.logits[0], tol)
    assert abs(packed.loss.item() - loss.item()) < tol * abs(loss.item())
    for name, param in model.named_parameters():
        assert_close(name, param.grad, packed_grads[name], 10 * tol)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_no_leakage_between_packed_sequences(arch):
    model = tiny_model(arch, torch.float32)
    sequences, prompts = sequences_and_prompts()
    changed = [s.clone() for s in sequences]
    changed[2] = (changed[2] + 1) % 97
    with torch.no_grad():
        a = model(**pack_sequences(sequences, prompts).model_kwargs()).logits[0]
        b = model(**pack_sequences(changed, prompts).model_kwargs()).logits[0]
    bounds = [0, 9, 10, 33, 37, 53]
    for i in range(5):
        rows = slice(bounds[i], bounds[i + 1])
        same = torch.equal(a[rows], b[rows])
        assert same == (i != 2), i


def test_padded_and_position_id_inputs_match_packed(assert_close):
    model = tiny_model("qwen3", torch.float64)
    sequences, prompts = sequences_and_prompts()
    batch = pack_sequences(sequences, prompts)
    with torch.no_grad():
        packed = model(**batch.model_kwargs()).logits[0]
        # Packed rows with only position_ids (boundaries derived on the fly).
        from_positions = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[0]
        # A right-padded batch with a 2D attention mask.
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        mask = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, tokens in enumerate(sequences):
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        padded = model(input_ids=ids, attention_mask=mask).logits
    assert_close("from_positions", packed, from_positions, 1e-6)
    unpadded = torch.cat([padded[row, : len(s)] for row, s in enumerate(sequences)])
    assert_close("unpadded", packed, unpadded, 1e-6)


def test_generation_with_a_cache_says_what_to_do():
    model = tiny_model("llama", torch.float32)
    with pytest.raises(ValueError, match="set_attn_implementation"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)


class LargeTensorWatch(TorchDispatchMode):
    """Records every aten op that produces a tensor of at least `limit` elements."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.seen = limit, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.numel() >= self.limit:
                self.seen.append((str(func), tuple(tensor.shape)))
        return out


def test_no_dense_mask_is_built():
    model = tiny_model("qwen2", torch.float32)
    batch = pack_sequences([torch.randint(0, 97, (n,)) for n in (300, 200, 250)])
    total = batch.num_tokens

    control = LargeTensorWatch(total * total)  # transformers' SDPA path does build one
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), control:
        model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    assert any(shape[-2:] == (total, total) for _, shape in control.seen)

    watch = LargeTensorWatch(total * total)
    model.set_attn_implementation(register())
    with torch.no_grad(), watch:
        model(**batch.model_kwargs())
    assert not watch.seen, watch.seen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("heads,kv_heads", [(12, 2), (32, 8)])
def test_every_gpu_backend_matches_naive(heads, kv_heads):
    torch.manual_seed(0)
    lengths = [1, 37, 1500, 2100, 300]
    total = sum(lengths)
    q = torch.randn(total, heads, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, kv_heads, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, kv_heads, 128, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 1, 38, 1538, 3638, 3938], dtype=torch.int32, device="cuda")
    want = naive_attention(q.cpu(), k.cpu(), v.cpu(), lengths)
    for backend in available_backends(q.device):
        out = varlen_attention(q, k, v, cu, 2100, backend=backend)
        error = ((out.double().cpu() - want).norm() / want.norm()).item()
        assert error < 2e-2, (backend, error)


def gpu_backends() -> list[str]:
    return available_backends(torch.device("cuda")) if torch.cuda.is_available() else []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["fa4", "fa2", "torch", "sdpa"])
def test_packed_model_equals_per_sequence_on_gpu(backend, monkeypatch, assert_close):
    """A bf16 Qwen2 with 128-wide heads (FA4's shapes), packed through `backend`, against each
    sequence alone through fp32 eager attention: logits, loss and every gradient; and changing
    one sequence leaves the others' logits bit-identical."""
    if backend not in gpu_backends():
        pytest.skip(f"{backend} is not available here ({gpu_backends()})")
    monkeypatch.setenv("CD_FAST_ATTN", backend)
    config = model_config("gpu-qwen2", vocab_size=997)
    torch.manual_seed(3)
    reference = AutoModelForCausalLM.from_config(config, attn_implementation=register())
    model = AutoModelForCausalLM.from_config(config, attn_implementation=register())
    model.load_state_dict(reference.state_dict())
    model = model.to("cuda", torch.bfloat16)
    generator = torch.Generator().manual_seed(4)
    lengths, prompts = [1, 37, 700, 129, 1500, 64], [0, 5, 30, 0, 100, 3]
    sequences = [torch.randint(0, 997, (n,), generator=generator) for n in lengths]
    batch = pack_sequences(sequences, prompts, device="cuda")

    packed = model(**batch.model_kwargs(), labels=batch.labels)
    packed.loss.backward()
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters()}
    logits_ref, loss_ref = per_sequence(reference, sequences, prompts)
    loss_ref.backward()
    assert_close("logits", logits_ref.detach(), packed.logits[0].float().cpu(), 2e-2)
    assert abs(packed.loss.item() - loss_ref.item()) < 1e-2 * loss_ref.item()
    for name, param in reference.named_parameters():  # bf16 backward: ~5e-2 on tiny grads
        assert_close(name, param.grad, grads[name], 1e-1)

    changed = [s.clone() for s in sequences]
    changed[2] = (changed[2] + 1) % 997
    with torch.no_grad():
        a = model(**batch.model_kwargs()).logits[0]
        b = model(**pack_sequences(changed, prompts, device="cuda").model_kwargs()).logits[0]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    for i in range(len(lengths)):
        rows = slice(bounds[i], bounds[i + 1])
        assert torch.equal(a[rows], b[rows]) == (i != 2), (backend, i)
