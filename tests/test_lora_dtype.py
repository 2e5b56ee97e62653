"""LoRA adapters compute in the model's dtype: in a bf16 model no adapter GEMM runs in fp32 and
no activation is cast for an adapter; the optimizer keeps fp32 masters, so the losses follow
the fp32-adapter path (peft's default) within bf16 tolerance."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cd_fast.kernels import pack_sequences
from cd_fast.train.config import TrainConfig
from cd_fast.train.model import CausalLMLoss, prepare_model
from cd_fast.train.optim import Optimization

RANK = 7  # no other dimension of the tiny model is 7: a GEMM with a 7 is an adapter's
aten = torch.ops.aten
GEMMS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.linear}


class AdapterOps(TorchDispatchMode):
    """Adapter GEMMs by dtype (forward and backward), and the dtype casts dispatched inside a
    LoRA layer's forward with their shapes."""

    def __init__(self, model):
        super().__init__()
        self.gemm_dtypes: list[torch.dtype] = []
        self.casts: list[tuple[int, ...]] = []
        self.inside = 0
        from peft.tuners.lora import LoraLayer

        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.register_forward_pre_hook(self._enter)
                module.register_forward_hook(self._leave)

    def _enter(self, *_):
        self.inside += 1

    def _leave(self, *_):
        self.inside -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        packet = func.overloadpacket
        if packet in GEMMS and any(RANK in t.shape for t in tensors):
            self.gemm_dtypes.append(tensors[-1].dtype)
        casting = packet is aten._to_copy and kwargs.get("dtype", args[0].dtype) != args[0].dtype
        if self.inside and casting:
            self.casts.append(tuple(args[0].shape))
        return func(*args, **kwargs)


def lora_setup(path, adapters: torch.dtype):
    config = TrainConfig(
        output_dir="unused",
        max_steps=20,
        lora_r=RANK,
        bf16=True,
        device="cpu",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
    )
    torch.manual_seed(0)
    model, _ = prepare_model(path, config, torch.device("cpu"))
    if adapters != torch.bfloat16:  # peft's default: fp32 adapters in a bf16 model
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(adapters)
    trained = [p for p in model.parameters() if p.requires_grad]
    return model, CausalLMLoss(model, "cd_fast", 1 << 30), Optimization(model, trained, config, 20)


def batches(vocab: int, count: int = 20):
    """The same packed batch `count` times (memorised by the adapters: the loss falls)."""
    generator = torch.Generator().manual_seed(0)
    lengths = [40, 55, 23]
    sequences = [torch.randint(5, vocab, (n,), generator=generator).tolist() for n in lengths]
    batch = pack_sequences(sequences, [3, 5, 2])
    return [batch] * count


@pytest.fixture(scope="module")
def qwen3(tiny_models):
    return tiny_models["qwen3"]


def test_adapters_compute_in_bf16(qwen3):
    model, loss_module, optim = lora_setup(qwen3, torch.bfloat16)
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert adapters and {p.dtype for p in adapters} == {torch.bfloat16}
    assert optim.masters is not None  # fp32 masters of the bf16 adapters
    batch = batches(model.config.vocab_size, 1)[0]
    ops = AdapterOps(model)
    with ops:
        (loss_module(batch) / batch.num_label_tokens).backward()
    assert ops.gemm_dtypes, "no adapter GEMM seen: the test does not see the adapters"
    assert set(ops.gemm_dtypes) == {torch.bfloat16}, ops.gemm_dtypes
    assert ops.casts == [], f"dtype casts inside LoRA layers: {ops.casts[:5]}"
    assert {p.grad.dtype for p in adapters} == {torch.bfloat16}

    fp32_model, fp32_loss, _ = lora_setup(qwen3, torch.float32)  # peft's default
    seen = AdapterOps(fp32_model)
    with seen:
        fp32_loss(batch).backward()
    assert torch.float32 in seen.gemm_dtypes and seen.casts  # the counter sees the fp32 path


def test_bf16_adapters_follow_the_fp32_adapter_losses(qwen3):
    losses = {}
    for dtype in (torch.bfloat16, torch.float32):
        model, loss_module, optim = lora_setup(qwen3, dtype)
        losses[dtype] = []
        for batch in batches(model.config.vocab_size):
            loss = loss_module(batch) / batch.num_label_tokens
            loss.backward()
            optim.clip()
            optim.update()
            optim.zero_grad()
            optim.next_lr()
            losses[dtype].append(loss.item())
    bf16, fp32 = torch.tensor(losses[torch.bfloat16]), torch.tensor(losses[torch.float32])
    assert fp32[-1] < fp32[0] - 0.1  # it learns: the comparison means something
    assert torch.allclose(bf16, fp32, rtol=2e-2), (bf16, fp32)
