"""Install layout: the extension, the kernels subpackage, the wheel, and the missing-build hint."""

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python_with(python, code, cwd, env=None):
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def run_python(code, cwd, env=None):
    return run_python_with(sys.executable, code, cwd, env)


def test_public_modules_import():
    import cd_fast
    import cd_fast._C
    import cd_fast.kernels

    assert cd_fast.kernels.__name__ == "cd_fast.kernels"
    assert callable(cd_fast.segment_steps)
    assert cd_fast._C.available_cpus() >= 1


# Imports transformers' hub-kernel integration (which imports Hugging Face's `kernels` when it is
# installed) and builds a tiny Qwen3.5 and a tiny Llama, beside cd_fast's own kernels.
HUB_KERNELS_PROBE = """
import importlib.metadata, json
import torch, transformers
import transformers.integrations.hub_kernels
import kernels
import cd_fast.kernels
from cd_fast.bench.shapes import model_config

for name in ("micro-qwen3_5", "tiny-llama"):
    torch.manual_seed(0)
    config = model_config(name, vocab_size=300)
    model = transformers.AutoModelForCausalLM.from_config(config)
    logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    assert logits.shape == (1, 5, 300) and bool(torch.isfinite(logits).all()), name
print(json.dumps({
    "kernels": getattr(kernels, "__file__", None),
    "hub_names": "CUDAProperties" in vars(kernels) and "kernelize" in vars(kernels),
    "available": transformers.utils.is_kernels_available(),
    "ours": cd_fast.kernels.__file__,
    "token_scores": callable(cd_fast.kernels.token_scores),
}))
"""


def hf_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_hub_kernels_probe(python: str, cwd: Path) -> dict:
    """Runs the probe as `python -c` from `cwd` (the repository root puts our `kernels/` first on
    sys.path): `kernels` is Hugging Face's package, or absent when that is not installed."""
    result = subprocess.run(
        [python, "-c", HUB_KERNELS_PROBE], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    if hf_kernels_installed():
        assert found["kernels"] and not found["kernels"].startswith(str(REPO / "kernels")), found
        assert found["hub_names"] and found["available"], found
    else:
        assert found["kernels"] is None and not found["available"], found
    assert found["token_scores"] and found["ours"].endswith("__init__.py"), found
    return found


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_hub_kernels_and_tiny_models_import_beside_ours(where, tmp_path):
    check_hub_kernels_probe(sys.executable, REPO if where == "root" else tmp_path)


def test_top_level_kernels_without_the_hub_package_is_inert():
    # -S: no site-packages, so Hugging Face's `kernels` is not installed as far as this process
    # knows; from the root, our folder must then look like an empty namespace and run nothing.
    code = (
        "import kernels\n"
        "public = [n for n in vars(kernels) if not n.startswith('__')]\n"
        "print(kernels.__file__, public, kernels.__path__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "[]", "[]"]


def cli_help_commands(python: str) -> dict[str, list[str]]:
    """`python -m cd_fast.cli --help` and `torchrun --nproc-per-node 1 -m cd_fast.cli train
    --help` (the console script beside `python` when it is there, else its module)."""
    script = Path(python).with_name("torchrun")
    launcher = [str(script)] if script.exists() else [python, "-m", "torch.distributed.run"]
    return {
        "python -m": [python, "-m", "cd_fast.cli", "--help"],
        "torchrun": [*launcher, "--nproc-per-node", "1", "-m", "cd_fast.cli", "train", "--help"],
    }


def check_cli_help(command: list[str], cwd: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "usage: cdfast" in result.stdout, result.stdout


@pytest.mark.parametrize("launcher", ["python -m", "torchrun"])
def test_cli_help_from_the_repository_root(launcher):
    check_cli_help(cli_help_commands(sys.executable)[launcher], REPO)


def test_missing_extension_says_how_to_build(tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cd_fast._C':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import cd_fast\n"
        "try:\n"
        "    cd_fast.segment_steps(['a'])\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cd_fast._C is not built" in result.stdout and "pip install -e ." in result.stdout


@pytest.mark.slow
def test_wheel_builds_and_imports(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("cd_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("cd_fast/_C") and n.endswith(".so") for n in names)
    assert "cd_fast/kernels/__init__.py" in names and "cd_fast/bench/segment.py" in names
    assert {f"cd_fast/compress/prompts/level{n}.txt" for n in (1, 2, 3)} <= set(names)
    assert not any(n.startswith(("kernels/", "bench/", "tests/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)

    # A fresh virtual environment with the wheel pip-installed; the dependencies come from this
    # one's site-packages (a path entry, so its editable install of this checkout stays out).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    code = (
        "import cd_fast, cd_fast.kernels, cd_fast._C\n"
        "print(cd_fast.__file__)\n"
        "print(cd_fast.segment_steps(['One sentence here. Another one follows.'])[0].tolist())\n"
    )
    result = run_python_with(python, code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert purelib in result.stdout and "[[0, 19], [19, 39]]" in result.stdout
    for cwd in (REPO, tmp_path):
        check_hub_kernels_probe(python, cwd)
        for command in cli_help_commands(python).values():
            check_cli_help(command, cwd)
    check_cli_help([str(venv / "bin" / "cdfast"), "--help"], tmp_path)
