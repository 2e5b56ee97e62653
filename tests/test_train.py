"""The trainer on CPU: tiny random Qwen2/Qwen3/Llama models and a hybrid Gated-DeltaNet Qwen3.5
with SmolLM2's real tokenizer, trained on the real Qwen3-8B traces in ../shared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cd_fast.bench.shapes import SHAPES, model_config
from cd_fast.data import TraceReader
from cd_fast.kernels import IGNORE_INDEX, StaticShape, TokenStore, pack_sequences
from cd_fast.patches import causal_lm
from cd_fast.train import NonFiniteLossError, Trainer, split_step
from cd_fast.train.config import TrainConfig
from cd_fast.train.loss import linear_cross_entropy_sum
from cd_fast.train.memory import ModelShape, fit_memory
from cd_fast.train.model import CausalLMLoss, prepare_model
from cd_fast.train.packing import Piece, StepPlanner, static_shape

REPO = Path(__file__).resolve().parents[1]
TRACES = "qwen3-8b-thinking/qwen3-8b__think-on.jsonl"
ITEMS = "qwen3-8b-thinking/items.json"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def traces(shared_data: Path, limit: int = 48) -> list:
    reader = TraceReader(shared_data / TRACES, prompts=shared_data / ITEMS)
    return [t for _, t in zip(range(limit), reader, strict=False)]


def config(tmp_path: Path, **options) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=3e-3,
        max_steps=6,
        max_tokens_per_step=1024,
        max_seq_length=512,
        logging_steps=1,
        save_steps=0,
        lr_scheduler_type="constant",
        export="none",
        device="cpu",
    )
    return TrainConfig(**{**base, **options})


# ---- the loss ----


def test_loss_backends():
    """The trainer's loss: cd_fast's kernel (its own tests: test_linear_cross_entropy.py) by
    default; bad rows and backends are refused."""
    hidden, weight = torch.randn(5, 8), torch.randn(11, 8)
    targets = torch.tensor([1, 2, -100, 4, 5])
    loss = linear_cross_entropy_sum(hidden, weight, targets)
    want = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert torch.allclose(loss, want, rtol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        linear_cross_entropy_sum(hidden, weight, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="loss backend must be one of"):
        linear_cross_entropy_sum(hidden, weight, targets, backend="bogus")
    with pytest.raises(ValueError, match="loss_backend must be one of"):
        TrainConfig(output_dir="x", max_steps=1, loss_backend="bogus")


# ---- packed training equals per-sequence training ----


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_loss_and_grads_equal_per_sequence(tiny_kind, checkpointing, tiny_models, tmp_path):
    kind = tiny_kind
    from transformers import AutoModelForCausalLM

    cfg = config(tmp_path, gradient_checkpointing=checkpointing)
    model, _ = prepare_model(tiny_models[kind], cfg, torch.device("cpu"))
    reference = AutoModelForCausalLM.from_pretrained(tiny_models[kind], attn_implementation="eager")
    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, 49152, n) for n in (37, 5, 120, 64)]
    prompts = [10, 0, 30, 63]
    batch = pack_sequences(sequences, prompts, device="cpu")
    packed = CausalLMLoss(model, "cd_fast", max_chunk_bytes=50 * 6000)(batch)
    packed.backward()
    total = torch.zeros((), dtype=torch.float64)
    for tokens, prompt in zip(sequences, prompts, strict=True):
        ids = torch.as_tensor(tokens)[None]
        labels = ids.clone()
        labels[0, : max(prompt, 1)] = -100
        logits = reference(input_ids=ids).logits[0, :-1].double()
        part = torch.nn.functional.cross_entropy(logits, labels[0, 1:], reduction="sum")
        part.backward()
        total += part.detach()
    expected_labels = sum(len(s) - max(p, 1) for s, p in zip(sequences, prompts, strict=True))
    assert batch.num_label_tokens == expected_labels
    assert abs(packed.item() - total.item()) / total.item() < 1e-5
    ours = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        ref = param.grad.double()
        error = (ours[name].grad.double() - ref).norm() / ref.norm().clamp_min(1e-12)
        assert error < 1e-4, name


# ---- training runs ----


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("qwen2", {}),
        ("qwen3", {"lora_r": 16, "lora_dropout": 0.1, "learning_rate": 5e-2}),
        ("llama", {"lora_r": 16, "load_in_4bit": True, "learning_rate": 5e-2}),
        ("qwen3_5", {}),
        ("qwen3_5", {"lora_r": 16, "learning_rate": 5e-2}),
        ("qwen3_5", {"lora_r": 16, "load_in_4bit": True, "learning_rate": 5e-2}),
    ],
    ids=[
        "full-qwen2",
        "lora-qwen3",
        "qlora-llama",
        "full-qwen3_5",
        "lora-qwen3_5",
        "qlora-qwen3_5",
    ],
)
def test_loss_falls_on_real_traces(kind, options, tiny_models, shared_data, tmp_path, monkeypatch):
    if kind == "qwen3_5":  # the conv kernel is checked above; interpreting it here costs 20 s
        monkeypatch.setenv("CD_FAST_CONV", "torch")
    cfg = config(tmp_path, max_steps=8, **options)
    result = Trainer(tiny_models[kind], traces(shared_data), cfg, progress=False).train()
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["tokens_per_s"] > 0 and r["label_tokens"] > 0 for r in rows)
    assert rows[-1]["loss"] == pytest.approx(losses[-1])


def test_qlora_quantises_the_blocks_and_keeps_the_head(tiny_models, tmp_path):
    import bitsandbytes as bnb

    cfg = config(tmp_path, lora_r=4, load_in_4bit=True)
    model, _ = prepare_model(tiny_models["llama"], cfg, torch.device("cpu"))
    base = model.get_base_model()
    assert isinstance(base.model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
    assert base.lm_head.weight.dtype == torch.float32  # the compute dtype, not upcast or quantised
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_resume_continues_the_exact_trajectory(tiny_models, shared_data, tmp_path, static_shapes):
    """Also with static shapes, whose learning rate is a tensor: it stays the run's own tensor
    (not the checkpoint's CPU copy) and goes on with the schedule."""
    data = traces(shared_data, 24)
    options = dict(
        static_shapes=static_shapes,
        max_steps=6,
        save_steps=3,
        save_total_limit=None,
        lora_r=8,
        lora_dropout=0.2,
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        warmup_ratio=0.2,
    )
    full = Trainer(tiny_models["qwen3"], data, config(tmp_path / "a", **options), progress=False)
    straight = full.train()
    run_a = tmp_path / "a" / "run"
    assert sorted(p.name for p in run_a.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    # A run killed after step 3 leaves exactly checkpoint-3 behind (beside its run.json).
    run_b = tmp_path / "b" / "run"
    run_b.mkdir(parents=True)
    shutil.copytree(run_a / "checkpoint-3", run_b / "checkpoint-3")
    shutil.copy(run_a / "run.json", run_b / "run.json")
    trainer = Trainer(
        tiny_models["qwen3"], data, config(tmp_path / "b", resume=True, **options), progress=False
    ).setup()  # the optimizer exists; the checkpoint is loaded by train()
    lr = trainer.optimizer.param_groups[0]["lr"]
    resumed = trainer.train()
    assert isinstance(lr, torch.Tensor) == static_shapes
    if static_shapes:
        assert trainer.optimizer.param_groups[0]["lr"] is lr
    assert float(lr) == pytest.approx(float(full.optimizer.param_groups[0]["lr"]), rel=1e-6)
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=1e-6, abs=0)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(
            tiny_models["qwen3"], data, config(tmp_path / "a", **options), progress=False
        ).train()


def test_one_step_equals_accumulated_micro_steps(tiny_models, shared_data, tmp_path):
    data = traces(shared_data, 32)
    runs = {}
    for accumulation in (1, 4):
        cfg = config(
            tmp_path / str(accumulation),
            max_steps=2,
            max_tokens_per_step=4096,
            gradient_accumulation_steps=accumulation,
        )
        trainer = Trainer(tiny_models["qwen2"], data, cfg, progress=False)
        result = trainer.train()
        runs[accumulation] = (result.losses, dict(trainer.model.named_parameters()))
    (losses_1, params_1), (losses_4, params_4) = runs[1], runs[4]
    for step in (1, 2):
        assert losses_4[step] == pytest.approx(losses_1[step], rel=1e-5)
    # The gradient norm sees a mis-scaled accumulation, which AdamW's update would hide.
    norms = {
        a: [
            json.loads(x)["grad_norm"]
            for x in (tmp_path / str(a) / "run" / "metrics.jsonl").read_text().splitlines()
        ]
        for a in (1, 4)
    }
    assert norms[4] == pytest.approx(norms[1], rel=1e-4)
    # AdamW turns fp32 summation-order noise on near-zero gradients into updates of up to a
    # few 1e-6 at this learning rate (3e-3): a tolerance above that.
    for name, param in params_1.items():
        assert torch.allclose(params_4[name], param, rtol=1e-4, atol=1e-5), name


def test_split_step_balances_micro_batches():
    pieces = [Piece(i, 0, n) for i, n in enumerate([700, 300, 260, 250, 240, 230, 200, 120, 60])]
    parts = split_step(pieces, 4)
    assert sorted(p.index for part in parts for p in part) == list(range(9))
    loads = [sum(p.length for p in part) for part in parts]
    assert max(loads) <= sum(loads) / 4 + 700
    assert split_step(pieces, 4) == parts  # deterministic
    assert split_step(pieces[:2], 4)[2:] == [[], []]


def test_bf16_master_weights_train(tiny_models, shared_data, tmp_path):
    cfg = config(tmp_path, bf16=True, max_steps=4, learning_rate=1e-2)
    trainer = Trainer(tiny_models["qwen2"], traces(shared_data, 24), cfg, progress=False)
    result = trainer.train()
    assert trainer.masters is not None
    assert all(m.dtype == torch.float32 for m in trainer.masters.masters)
    assert all(p.dtype == torch.bfloat16 for p in trainer.masters.params)
    for master, param in zip(trainer.masters.masters, trainer.masters.params, strict=True):
        assert torch.equal(master.to(torch.bfloat16), param)
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert losses[-1] < losses[0]


# ---- exports ----


def test_full_export_reloads(tiny_models, shared_data, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config(tmp_path, max_steps=2, export="auto")
    trainer = Trainer(tiny_models["qwen2"], traces(shared_data, 16), cfg, progress=False)
    result = trainer.train()
    reloaded = AutoModelForCausalLM.from_pretrained(result.export_path)
    ids = torch.arange(100, 140)[None]
    with torch.no_grad():
        trained = trainer.model.eval()(input_ids=ids).logits
        assert torch.allclose(reloaded(input_ids=ids).logits, trained, atol=1e-5)
    assert (result.export_path / "tokenizer.json").is_file()


def test_lora_adapter_and_merged_exports_reload(tiny_models, shared_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = traces(shared_data, 16)
    ids = torch.arange(100, 140)[None]
    outputs = {}
    for export in ("adapter", "merged"):
        cfg = config(tmp_path / export, max_steps=2, lora_r=8, learning_rate=1e-2, export=export)
        result = Trainer(tiny_models["qwen3"], data, cfg, progress=False).train()
        if export == "adapter":
            assert (result.export_path / "adapter_config.json").is_file()
            base = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"])
            model = PeftModel.from_pretrained(base, result.export_path)
        else:
            assert not (result.export_path / "adapter_config.json").exists()
            model = AutoModelForCausalLM.from_pretrained(result.export_path)
        with torch.no_grad():
            outputs[export] = model.eval()(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"])
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
    assert not torch.allclose(outputs["adapter"], untrained, atol=1e-4)  # the adapter did train
    assert torch.allclose(outputs["adapter"], outputs["merged"], atol=1e-4)


def test_qlora_merged_export_reloads(tiny_models, shared_data, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config(tmp_path, max_steps=2, lora_r=4, load_in_4bit=True, export="merged")
    result = Trainer(tiny_models["llama"], traces(shared_data, 16), cfg, progress=False).train()
    model = AutoModelForCausalLM.from_pretrained(result.export_path)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.arange(10)[None]).logits).all()


# ---- failures ----


def test_nan_loss_stops_with_step_and_samples_or_is_skipped(
    make_tiny, tokenizer_dir, shared_data, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny("llama", tokenizer_dir, tmp_path / "untied", tied=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    poison = next(
        t
        for t in range(40000, 49152)
        if tokenizer(" " + tokenizer.decode([t]), add_special_tokens=False)["input_ids"][-1:] == [t]
    )
    data = [t.to_dict() for t in traces(shared_data, 12)]
    data[5]["trace"] = tokenizer.decode([poison]) + " " + data[5]["trace"]
    for policy in ("stop", "skip"):
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            model.model.embed_tokens.weight[poison] = float("nan")
        cfg = config(tmp_path / policy, nan_policy=policy, max_steps=4, max_tokens_per_step=2048)
        trainer = Trainer(model, data, cfg, tokenizer=tokenizer, progress=False)
        if policy == "stop":
            with pytest.raises(
                NonFiniteLossError, match=r"step \d+: loss is nan.*" + data[5]["id"]
            ):
                trainer.train()
        else:
            result = trainer.train()
            assert len(result.skipped_steps) >= 1
            assert len(result.losses) == 4 - len(result.skipped_steps)
            assert all(np.isfinite(list(result.losses.values())))
            assert all(
                torch.isfinite(p).all() for n, p in model.named_parameters() if "embed" not in n
            )


def test_max_memory_picks_checkpointing_then_accumulation_or_fails(tmp_path):
    shape = ModelShape.from_config(model_config("qwen2.5-1.5b"))
    cfg = config(tmp_path, bf16=True, max_tokens_per_step=32768, max_seq_length=4096)
    roomy = fit_memory(shape, cfg, 200, on_cuda=True)
    assert not roomy.gradient_checkpointing and roomy.gradient_accumulation_steps == 1
    tight = fit_memory(shape, cfg, 40, on_cuda=True)
    assert tight.gradient_checkpointing and tight.gradient_accumulation_steps == 1
    tighter = fit_memory(shape, cfg, 30, on_cuda=True)
    assert tighter.gradient_checkpointing and tighter.gradient_accumulation_steps > 1
    assert tighter.total <= 30 * 2**30 < tight.total
    with pytest.raises(ValueError, match=r"does not fit in max_memory=8 GiB.*QLoRA"):
        fit_memory(shape, cfg, 8, on_cuda=True)
    qlora = TrainConfig(**{**cfg.to_dict(), "lora_r": 16, "load_in_4bit": True})
    assert fit_memory(shape, qlora, 8, on_cuda=True).total < 8 * 2**30


# ---- the command line ----


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(data / TRACES),
        "--prompts",
        str(data / ITEMS),
        "--model",
        str(model),
        "-o",
        str(out),
        "--limit",
        "40",
        "--max-tokens-per-step",
        "1024",
        "--max-seq-length",
        "512",
        "--learning-rate",
        "3e-3",
        "--logging-steps",
        "1",
        "--device",
        "cpu",
        "--lr-scheduler-type",
        "constant",
        *extra,
    ]


def metrics(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def sigterm_after_two_steps(command: list[str], env: dict, run: Path, log: Path) -> tuple[int, str]:
    """Start a training command, SIGTERM it once `run` has two metrics rows; (exit code,
    stderr). Stderr goes to a file: a full pipe would block the child."""
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file
        )
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            rows = run / "metrics.jsonl"
            if rows.is_file() and len(rows.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    return process.returncode, log.read_text()


def test_cli_sigterm_checkpoints_and_resume_matches(tiny_models, shared_data, tmp_path, cdfast):
    model = tiny_models["qwen2"]
    straight = tmp_path / "straight"
    done = cdfast(*train_args(model, shared_data, straight, "--max-steps", "8", "--export", "none"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "label tokens/s" in done.stdout

    killed = tmp_path / "killed"
    args = train_args(model, shared_data, killed, "--max-steps", "8", "--export", "none")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cd_fast.cli", *args]
    returncode, stderr = sigterm_after_two_steps(command, env, killed, tmp_path / "stderr.log")
    assert returncode == 128 + signal.SIGTERM, stderr[-2000:]
    checkpoints = sorted(killed.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and "resume with --resume" in stderr
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 2 <= stopped_at < 8

    resumed = cdfast(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = metrics(straight), metrics(killed)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


def test_cli_errors_are_one_line(tiny_models, shared_data, tmp_path, cdfast):
    model = tiny_models["qwen2"]
    too_small = cdfast(*train_args(model, shared_data, tmp_path / "m", "--max-memory", "0.001"))
    assert too_small.returncode == 2
    assert "does not fit in max_memory=0.001 GiB" in too_small.stderr
    assert "Traceback" not in too_small.stderr
    bad = cdfast(*train_args(model, shared_data, tmp_path / "q", "--load-in-4bit"))
    assert bad.returncode == 2 and "needs lora_r > 0" in bad.stderr


def test_distributed_strategy_defaults_and_sharded_memory(tmp_path):
    from cd_fast.train.distributed import resolve_strategy
    from cd_fast.train.memory import estimate_memory

    full, lora = config(tmp_path), config(tmp_path, lora_r=8)
    assert resolve_strategy(full, 1) is None
    assert (resolve_strategy(full, 4), resolve_strategy(lora, 4)) == ("fsdp", "ddp")
    assert resolve_strategy(config(tmp_path, lora_r=8, distributed="fsdp"), 4) == "fsdp"
    with pytest.raises(ValueError, match=r"QLoRA .* runs under distributed='ddp'"):
        config(tmp_path, lora_r=8, load_in_4bit=True, distributed="fsdp")
    with pytest.raises(ValueError, match="fsdp_cpu_offload needs distributed='fsdp'"):
        config(tmp_path, distributed="ddp", fsdp_cpu_offload=True)

    shape = ModelShape(28, 1536, 8960, 12, 2, 128, 151936, True)  # Qwen2.5-1.5B
    on_gpu = config(tmp_path, bf16=True, max_tokens_per_step=16384, max_seq_length=4096)
    replicated = estimate_memory(shape, on_gpu, True, False, 1, 8)
    sharded = estimate_memory(shape, on_gpu, True, False, 1, 8, sharded=True)
    offloaded = estimate_memory(
        shape, replace(on_gpu, fsdp_cpu_offload=True), True, False, 1, 8, sharded=True
    )
    states = replicated.weights + replicated.gradients + replicated.optimizer
    assert sharded.optimizer == pytest.approx(replicated.optimizer / 8)
    assert sharded.gradients == pytest.approx(replicated.gradients / 8)
    assert states / 8 < sharded.weights + sharded.gradients + sharded.optimizer < states / 2
    assert offloaded.optimizer == offloaded.gradients == 0
    assert sharded.activations == replicated.activations


# ---- several processes (gloo): DDP and FSDP2 ----

TORCHRUN_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
# (model, options) of the runs compared across process counts: LoRA and a full fine-tune.
# Adam turns a gradient at rounding-noise level into a full learning-rate step of random sign
# (LoRA's A gets ~0 gradients while B is ~0): epsilon 1e-6 damps those, so weights compare.
DISTRIBUTED_RUNS = {
    "lora": ("qwen3", ("--max-steps", "3", "--lora-r", "8", "--export", "adapter")),
    "full": ("qwen2", ("--max-steps", "6", "--save-steps", "2", "--export", "merged")),
}
DISTRIBUTED_OPTIONS = ("--adam-epsilon", "1e-6")


def torchrun_command(processes: int, args: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(processes), "-m", "cd_fast.cli", *args]


def torchrun(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    command = torchrun_command(processes, args)
    return subprocess.run(
        command, capture_output=True, text=True, env=TORCHRUN_ENV, cwd=REPO, timeout=600
    )


def exported_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((run / "final").glob("*.safetensors"))
    assert files, f"no export in {run / 'final'}"
    return {name: t for f in files for name, t in load_file(f).items()}


@pytest.fixture(scope="module")
def one_process_runs(tiny_models, shared_data, tmp_path_factory, cdfast):
    """The reference of each DISTRIBUTED_RUNS entry: one process, 2 accumulated micro-batches
    (what 2 ranks with 1 micro-batch each compute)."""
    root = tmp_path_factory.mktemp("one-process")
    runs: dict[str, Path] = {}
    for kind, (model, options) in DISTRIBUTED_RUNS.items():
        out = root / kind
        done = cdfast(
            *train_args(tiny_models[model], shared_data, out, *options, *DISTRIBUTED_OPTIONS),
            "--gradient-accumulation-steps",
            "2",
            env={"OMP_NUM_THREADS": "1"},  # as the ranks run: the same BLAS rounding
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs[kind] = out
    return runs


def assert_same_run(expected: Path, got: Path, steps: list[int], weights: bool = True) -> None:
    reference, losses = metrics(expected), metrics(got)
    assert sorted(losses) == steps
    for step in steps:
        assert losses[step] == pytest.approx(reference[step], rel=1e-5), step
    if weights:
        reference_tensors, tensors = exported_tensors(expected), exported_tensors(got)
        assert tensors.keys() == reference_tensors.keys()
        for name, tensor in tensors.items():
            torch.testing.assert_close(tensor, reference_tensors[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kind, strategy, extra",
    [
        ("lora", "ddp", ()),
        ("lora", "fsdp", ("--fsdp-cpu-offload",)),
        ("full", "fsdp", ("--gradient-checkpointing",)),
    ],
)
def test_two_gloo_processes_match_one(
    kind, strategy, extra, one_process_runs, tiny_models, shared_data, tmp_path
):
    model, options = DISTRIBUTED_RUNS[kind]
    out = tmp_path / "two"
    args = train_args(tiny_models[model], shared_data, out, *options, *DISTRIBUTED_OPTIONS, *extra)
    args += ["--distributed", strategy]
    done = torchrun(2, args)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["world_size"], saved["distributed"]) == (2, strategy)
    steps = sorted(metrics(one_process_runs[kind]))
    assert_same_run(one_process_runs[kind], out, steps)
    if kind == "full":  # sharded checkpoints; the gathered export loads in transformers
        assert (out / "checkpoint-6" / "sharded" / ".metadata").is_file()
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(out / "final")


def test_fsdp_sigterm_checkpoints_and_resumes_on_any_world_size(
    one_process_runs, tiny_models, shared_data, tmp_path, cdfast
):
    """SIGTERM to torchrun (what a scheduler sends): the ranks agree on a step, write a sharded
    checkpoint and stop; --resume repeats the uninterrupted losses on 2 ranks, and on 3. With
    static shapes (a tensor learning rate through DCP's optimizer state; padding that does not
    change the losses)."""
    model, options = DISTRIBUTED_RUNS["full"]
    killed = tmp_path / "killed"
    args = [
        *train_args(tiny_models[model], shared_data, killed, *options, *DISTRIBUTED_OPTIONS),
        "--save-steps",
        "0",
        "--distributed",
        "fsdp",
        "--static-shapes",
    ]
    command = torchrun_command(2, args)
    _, stderr = sigterm_after_two_steps(command, TORCHRUN_ENV, killed, tmp_path / "stderr.log")
    checkpoints = sorted(killed.glob("checkpoint-*"))
    assert len(checkpoints) == 1, stderr[-3000:]
    assert (checkpoints[0] / "sharded" / ".metadata").is_file()
    assert 2 <= int(checkpoints[0].name.split("-")[1]) < 6
    assert not (killed / "final").exists()

    alone = cdfast(*args, "--resume")  # one process cannot read the shards
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    assert "resume it under torchrun with --distributed fsdp" in alone.stderr

    three = tmp_path / "three"
    shutil.copytree(killed, three)
    resumed = torchrun(2, [*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(one_process_runs["full"], killed, list(range(1, 7)))
    other_args = train_args(tiny_models[model], shared_data, three, *options, *DISTRIBUTED_OPTIONS)
    other_args += ["--resume", "--static-shapes"]
    other = torchrun(3, [*other_args, "--distributed", "fsdp"])
    assert other.returncode == 0, other.stderr[-3000:]
    assert "saved by 2 ranks, resuming on 3" in other.stderr
    assert_same_run(one_process_runs["full"], three, list(range(1, 7)))


# ---- hybrid linear-attention models ----

MOE_SHAPE = dict(
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
)
HYBRIDS = {
    "qwen3_5": ("Qwen3_5TextConfig", {}),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", MOE_SHAPE),
    "qwen3_next": ("Qwen3NextConfig", {**MOE_SHAPE, "linear_num_value_heads": 2}),
}


def tiny_hybrid(kind: str):
    import transformers
    from transformers import AutoModelForCausalLM

    from cd_fast.patches import register
    from cd_fast.patches.linear_attention import enable_packing

    config_name, extra = HYBRIDS[kind]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        getattr(transformers, config_name)(**{**SHAPES["micro-qwen3_5"][1], **extra})
    ).eval()
    model.config._attn_implementation = register()
    assert enable_packing(model) is not None
    return model


@pytest.mark.parametrize("kind", sorted(HYBRIDS))
def test_packed_hybrid_logits_equal_each_sequence_alone(kind, assert_close):
    model = tiny_hybrid(kind)
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 300, n) for n in (37, 1, 3, 70)]
    batch = pack_sequences(sequences, device="cpu")
    with torch.no_grad():
        packed = model(**batch.model_kwargs()).logits[0]
        alone = torch.cat([model(input_ids=torch.as_tensor(s)[None]).logits[0] for s in sequences])
        assert_close("logits", alone, packed, 1e-5)
        # changing one sequence changes no other sequence's logits
        changed = [s.copy() for s in sequences]
        changed[2][:] = (changed[2] + 1) % 300
        again = model(**pack_sequences(changed, device="cpu").model_kwargs()).logits[0]
    start, end = 38, 41  # sequence 2's rows
    assert torch.equal(again[:start], packed[:start]) and torch.equal(again[end:], packed[end:])
    assert not torch.allclose(again[start:end], packed[start:end])


@pytest.mark.parametrize("kind", sorted(HYBRIDS))
def test_static_padding_leaves_a_hybrids_logits_alone(kind, assert_close):
    """Static shapes on a hybrid: the padding sequence and the empty ones go through the
    convolution and the delta rule too, and change no real row's logits or gradients."""
    model = tiny_hybrid(kind)
    rng = np.random.default_rng(5)
    store = TokenStore([rng.integers(0, 300, n) for n in (37, 1, 3, 70)], [5, 0, 1, 9])
    dynamic = store.pack(range(4))
    static = store.pack(range(4), shape=StaticShape(tokens=160, sequences=8, max_seqlen=70))
    assert static.seq_lengths[4] == 160 - dynamic.num_tokens and static.seq_lengths[5:] == [0] * 3
    rows = dynamic.num_tokens
    grads = {}
    for name, batch in (("dynamic", dynamic), ("static", static)):
        model.zero_grad()
        logits = model(**batch.model_kwargs()).logits[0]
        logits[:rows].float().logsumexp(-1).sum().backward()
        grads[name] = (logits[:rows].detach(), model.lm_head.weight.grad.clone())
    assert_close("logits", grads["dynamic"][0], grads["static"][0], 1e-5)
    assert_close("lm_head grad", grads["dynamic"][1], grads["static"][1], 1e-5)


def test_unsupported_token_mixers_are_refused_before_training(tokenizer_dir, tmp_path, cdfast):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cd_fast.patches import UnpackableModelError

    shape = dict(hidden_size=32, num_hidden_layers=2, vocab_size=100, intermediate_size=64)
    models = {
        "mamba": transformers.MambaConfig(**shape, state_size=4),
        "lfm2": transformers.Lfm2Config(
            **shape,
            num_attention_heads=4,
            num_key_value_heads=2,
            layer_types=["conv", "full_attention"],
        ),
    }
    for name, architecture in models.items():
        model = AutoModelForCausalLM.from_config(architecture)
        with pytest.raises(UnpackableModelError, match=r"outside attention.*Qwen3\.5"):
            prepare_model(model, config(tmp_path / name), torch.device("cpu"))
    model.save_pretrained(tmp_path / "lfm2")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "lfm2")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "q", "trace": "t", "answer": "1"}) + "\n")
    done = cdfast("train", data, "--model", tmp_path / "lfm2", "-o", tmp_path / "run")
    assert done.returncode == 2, done.stderr
    assert "outside attention" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "final").exists()
    scored = cdfast("score", data, "--model", tmp_path / "lfm2", "-o", tmp_path / "scores")
    assert scored.returncode == 2 and "outside attention" in scored.stderr
    assert not (tmp_path / "scores" / "manifest.json").exists()  # a rerun needs no --resume


@pytest.mark.slow
def test_cdfast_score_on_packed_qwen3_5_equals_one_trace_at_a_time(
    tiny_models, shared_data, tmp_path, cdfast
):
    from cd_fast.models import load_causal_lm
    from cd_fast.score import Scorer, ScoreStore

    data = shared_data / "gsm8k" / "test.jsonl"
    out = tmp_path / "scores"
    done = cdfast("score", data, "--model", tiny_models["qwen3_5"], "-o", out, "--limit", "4")
    assert done.returncode == 0, done.stderr
    model, tokenizer = load_causal_lm(tiny_models["qwen3_5"], device="cpu")
    scorer = Scorer(model, tokenizer)
    traces = [t for _, t in zip(range(4), TraceReader(data), strict=False)]
    stored = ScoreStore(out).by_id()
    assert sorted(stored) == sorted(t.id for t in traces)
    for trace in traces:
        (alone,) = scorer.score([trace])
        assert np.allclose(stored[trace.id].surprisal, alone.surprisal, atol=1e-4)
        assert np.allclose(stored[trace.id].entropy, alone.entropy, atol=1e-4)


def test_model_shape_counts_a_hybrids_weights():
    from transformers import AutoModelForCausalLM

    architecture = model_config("micro-qwen3_5")
    model = AutoModelForCausalLM.from_config(architecture)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    shape = ModelShape.from_config(architecture)
    assert (shape.attention_layers, shape.linear_layers) == (1, 2)
    assert shape.matmul_params == linear


@pytest.mark.gpu
@needs_gpu
def test_packed_qwen3_5_on_gpu_equals_each_sequence_alone(assert_close):
    """bf16 on CUDA: the Triton conv and (when installed) fla's varlen delta rule."""
    from cd_fast.patches.linear_attention import select_conv_backend, select_delta_rule_backend

    model = tiny_hybrid("qwen3_5").to("cuda", torch.bfloat16)
    assert select_conv_backend(torch.device("cuda")) == "triton"
    print("delta rule backend:", select_delta_rule_backend(torch.device("cuda"), torch.bfloat16))
    rng = np.random.default_rng(5)
    sequences = [rng.integers(0, 300, n) for n in (700, 1, 65, 1500)]
    batch = pack_sequences(sequences, device="cuda")
    with torch.no_grad():
        packed = model(**batch.model_kwargs()).logits[0].float()
        alone = torch.cat(
            [model(input_ids=torch.as_tensor(s, device="cuda")[None]).logits[0] for s in sequences]
        ).float()
    assert_close("logits", alone, packed, 2e-2)


def test_liger_patches_stay_on_their_model():
    """Liger's patch functions swap transformers' module-level classes for the whole process;
    apply_liger undoes that, so a model built afterwards (a CPU scorer, say) stays stock."""
    pytest.importorskip("liger_kernel")
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.models.qwen2 import modeling_qwen2

    from cd_fast.patches import apply_liger

    before = dict(vars(modeling_qwen2))
    config = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=50,
    )
    patched = AutoModelForCausalLM.from_config(config)
    assert apply_liger(patched, explicit=True)
    names = {m._get_name() for m in patched.modules()}
    assert {"LigerRMSNorm", "LigerSwiGLUMLP"} <= names, names
    assert dict(vars(modeling_qwen2)) == before
    fresh = AutoModelForCausalLM.from_config(config)
    assert "LigerRMSNorm" not in {m._get_name() for m in fresh.modules()}
    assert torch.isfinite(fresh(torch.tensor([[1, 2, 3]])).logits).all()  # CPU: no Triton


# ---- GPU (bash bench/gpu.sh runs these on the device) ----


def chain_set(count: int = 64, vocab: int = 1000, seed: int = 0):
    """Learnable synthetic samples (no tokenizer, no network): each follows a fixed successor
    table over 12 symbols, so the loss can fall from ln(vocab) towards 0 in a few steps."""
    from cd_fast.train.data import TrainSet

    rng = np.random.default_rng(seed)
    symbols = rng.choice(np.arange(10, vocab), 12, replace=False)
    following = dict(zip(symbols.tolist(), rng.permutation(symbols).tolist(), strict=True))
    sequences = []
    for _ in range(count):
        tokens = [int(rng.choice(symbols))]
        for _ in range(int(rng.integers(40, 400)) - 1):
            tokens.append(following[tokens[-1]])
        sequences.append(np.array(tokens))
    return TrainSet([str(i) for i in range(count)], sequences, rng.integers(0, 8, count))


def gpu_model(out: Path | None = None):
    """A small random Qwen2 with 128-wide heads (what FlashAttention-4 takes); saved with a
    word-level tokenizer when `out` is given (QLoRA quantises while loading from a path)."""
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("gpu-qwen2"))
    if out is None:
        return model
    model.save_pretrained(out)
    vocab = {"<pad>": 0, "<unk>": 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<unk>"
    ).save_pretrained(out)
    return out


def gpu_run(tmp_path: Path, model, **options):
    base = dict(
        learning_rate=1e-3, max_steps=10, max_tokens_per_step=4096, device="cuda", bf16=True
    )
    trainer = Trainer(model, chain_set(), config(tmp_path, **{**base, **options}), progress=False)
    result = trainer.train()
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert all(np.isfinite(losses)), losses
    return trainer, losses


@pytest.mark.gpu
@needs_gpu
def test_bf16_full_training_on_gpu_uses_liger_and_the_fastest_attention(tmp_path):
    pytest.importorskip("liger_kernel")
    from cd_fast.patches.attention import available_backends, select_backend

    trainer, losses = gpu_run(tmp_path, gpu_model())
    assert np.mean(losses[-3:]) < losses[0] - 2.0, losses
    names = {m._get_name() for m in trainer.model.modules()}  # Liger renames what it patches
    assert {"LigerRMSNorm", "LigerSwiGLUMLP"} <= names, names
    device = torch.device("cuda")
    assert select_backend(device) == available_backends(device)[0]
    if torch.cuda.get_device_capability()[0] == 9:
        assert select_backend(device) == "fa4", "FlashAttention-4 is not importable on Hopper"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_memory_gib"] > 0 for r in rows)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("accumulation", [1, 2])
def test_cuda_graph_steps_equal_eager_steps_on_gpu(tmp_path, accumulation):
    """10 steps replayed from one captured graph (after 3 eager warm-up steps) follow the eager
    static-shape run; nan_policy skip and fp32 masters inside the graph."""
    options = dict(static_shapes=True, nan_policy="skip", gradient_accumulation_steps=accumulation)
    _, eager = gpu_run(tmp_path / "eager", gpu_model(), **options)
    trainer, graphed = gpu_run(tmp_path / "graphs", gpu_model(), cuda_graphs=True, **options)
    assert trainer.graphed.graph is not None and trainer.graphed.steps == 10
    assert np.allclose(graphed, eager, rtol=2e-2), (graphed, eager)
    assert np.mean(graphed[-3:]) < graphed[0] - 1.0, graphed


def test_cuda_graphs_refuses_what_it_cannot_capture(tmp_path):
    trainer = Trainer(gpu_model(), chain_set(), config(tmp_path, cuda_graphs=True))
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        trainer.setup()


@pytest.mark.gpu
@needs_gpu
def test_lora_step_on_gpu_trains_only_adapters(tmp_path):
    trainer, losses = gpu_run(tmp_path, gpu_model(), lora_r=8, learning_rate=5e-3)
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained), trained


@pytest.mark.gpu
@needs_gpu
def test_qlora_step_on_gpu(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    path = gpu_model(tmp_path / "model")
    trainer, losses = gpu_run(
        tmp_path,
        str(path),
        lora_r=8,
        learning_rate=5e-3,
        load_in_4bit=True,
        gradient_checkpointing=True,
    )
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    lm = causal_lm(trainer.model)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in lm.modules())
    assert lm.get_output_embeddings().weight.dtype == torch.bfloat16  # not upcast to fp32


@pytest.mark.gpu
@needs_gpu
def test_adamw_8bit_on_gpu(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    trainer, losses = gpu_run(tmp_path, gpu_model(), optim="adamw_8bit")
    assert isinstance(trainer.optimizer, bnb.optim.AdamW8bit)
    assert np.mean(losses[-3:]) < losses[0] - 2.0, losses


@pytest.mark.gpu
@needs_gpu
def test_compiled_blocks_match_eager_on_gpu(tmp_path):
    _, eager = gpu_run(tmp_path / "eager", gpu_model(), max_steps=4)
    _, compiled = gpu_run(tmp_path / "compiled", gpu_model(), max_steps=4, compile=True)
    assert compiled == pytest.approx(eager, rel=2e-2)


# ---- host syncs: none inside a training step ----


@pytest.mark.parametrize(
    "name, processes, extra",
    [
        ("full", 1, ()),
        ("lora", 1, ("--lora-r", "4")),
        ("ddp", 2, ("--lora-r", "4", "--distributed", "ddp")),
        ("fsdp", 2, ("--distributed", "fsdp")),
    ],
)
def test_a_training_step_never_waits_on_the_device(
    name, processes, extra, tiny_models, shared_data, tmp_path
):
    """20 steps with nan_policy skip, counted by tests/count_syncs.py (a TorchDispatchMode and
    patched Tensor.item/tolist): no sync op inside any step; the logging windows, where the
    loop is meant to read its losses, do sync (the counter sees them)."""
    args = train_args(tiny_models["qwen2"], shared_data, tmp_path / "run", *extra)
    args += ["--max-steps", "20", "--logging-steps", "5", "--nan-policy", "skip"]
    args += ["--export", "none"]
    counts = tmp_path / "syncs.json"
    script = [str(REPO / "tests" / "count_syncs.py"), str(counts)]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, "--nproc-per-node", str(processes), *script, *args]
    else:
        command = [sys.executable, *script, *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env=TORCHRUN_ENV, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = [counts] if processes == 1 else sorted(tmp_path.glob("syncs.rank*.json"))
    assert len(files) == processes
    for file in files:
        found = json.loads(file.read_text())
        assert sorted(map(int, found["steps"])) == list(range(1, 21))
        assert {step: ops for step, ops in found["steps"].items() if ops} == {}, file.name
        assert sorted(map(int, found["windows"])) == [5, 10, 15, 20]
        assert all(found["windows"].values())


@pytest.mark.gpu
@needs_gpu
def test_training_steps_run_under_sync_debug_mode_error(tmp_path):
    """On CUDA, with cd_fast's chunked loss (Liger's reads its label count back), 10 steps
    with nan_policy skip: any host sync inside a step raises."""
    from cd_fast.train import trainer as trainer_module

    original = trainer_module.Trainer._train_step

    def strict(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer_module.Trainer._train_step = strict
    try:
        gpu_run(tmp_path, gpu_model(), liger=False, nan_policy="skip", logging_steps=5)
    finally:
        trainer_module.Trainer._train_step = original


# ---- static shapes (one padded shape per run: compile without recompiles) ----


def test_padding_has_no_labels_and_fixed_sizes():
    store = TokenStore([np.arange(10, 30), np.arange(40, 47), np.arange(50, 90)], [3, 0, 5])
    shape = StaticShape(tokens=64, sequences=8, max_seqlen=40)
    dynamic = store.pack([0, 1])
    static = store.pack([0, 1], shape=shape)
    used = dynamic.num_tokens
    assert static.num_tokens == 64 and static.cu_seqlens.shape == (9,) and static.static
    assert static.max_seqlen == 40 and static.num_label_tokens == dynamic.num_label_tokens
    assert torch.equal(static.input_ids[0, :used], dynamic.input_ids[0])
    assert torch.equal(static.labels[0, :used], dynamic.labels[0])
    assert (static.labels[0, used:] == IGNORE_INDEX).all()  # padding carries no labels
    # the padding is whole sequences (positions restart; they attend only to themselves),
    # then empty ones up to the fixed count
    assert static.seq_lengths == [20, 7, 37, 0, 0, 0, 0, 0]
    assert static.cu_seqlens.tolist() == [0, 20, 27, 64, 64, 64, 64, 64, 64]
    assert static.position_ids[0, used:].tolist() == list(range(37))
    with pytest.raises(ValueError, match="do not fit the static shape"):
        store.pack([0, 1, 2], shape=shape)


def test_planned_shape_fits_every_micro_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, 500)
    planner = StepPlanner(lengths, 1024, seed=0)
    for parts in (1, 3):
        shape = static_shape(planner, parts, total_steps=400)  # several epochs
        assert shape.max_seqlen == lengths.max() and shape.sequences % 8 == 0
        # sized from the plans, not a bound: split over 3 parts, a micro-batch pads far less
        assert shape.tokens <= 1024 and (parts == 1 or shape.tokens <= 1024 // 2)
        store = TokenStore([np.ones(n, dtype=np.int64) for n in lengths])
        for epoch in range(3):
            for step in planner.epoch_plan(epoch):
                for part in split_step([planner.pieces[i] for i in step], parts):
                    if part:
                        index = [p.index for p in part]
                        batch = store.pack(index, shape=shape)  # raises if it does not fit
                        assert batch.num_tokens == shape.tokens


@pytest.mark.parametrize("accumulation", [1, 2])
def test_static_losses_equal_dynamic_losses(tiny_models, tmp_path, accumulation):
    from transformers import AutoModelForCausalLM

    losses = {}
    for static in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
        cfg = config(
            tmp_path / str(static),
            max_steps=8,
            static_shapes=static,
            gradient_accumulation_steps=accumulation,
        )
        trainer = Trainer(model, chain_set(vocab=model.config.vocab_size), cfg, progress=False)
        losses[static] = trainer.train().losses
        assert (trainer.static_shape is not None) == static
    assert losses[True].keys() == losses[False].keys()
    for step, loss in losses[False].items():
        assert abs(losses[True][step] - loss) < 1e-5 * max(1.0, abs(loss)), step


@pytest.mark.slow
def test_compiled_static_steps_do_not_break_or_recompile(tiny_models, tmp_path):
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    counters.clear()
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    cfg = config(tmp_path, max_steps=50, static_shapes=True, compile=True, logging_steps=10)
    trainer = Trainer(model, chain_set(count=200, vocab=model.config.vocab_size), cfg)
    result = trainer.train()
    assert len(result.losses) == 50
    packs = {tuple(step) for step in trainer.planner.epoch_plan(0)}
    assert len(packs) > 10  # different packs went through the compiled blocks
    breaks = sum(counters["graph_break"].values())
    assert breaks == 0, dict(counters["graph_break"])
    frames = counters["stats"]["unique_graphs"]
    assert 1 <= frames <= 3, dict(counters["stats"])  # the first compile plus at most 2 more
