"""Install layout: the extension, the kernels subpackage, the wheel, and the missing-build hint."""

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(code, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_public_modules_import():
    import cd_fast
    import cd_fast._C
    import cd_fast.kernels

    assert cd_fast.kernels.__name__ == "cd_fast.kernels"
    assert callable(cd_fast.segment_steps)
    assert cd_fast._C.available_cpus() >= 1


def test_top_level_kernels_is_never_ours(tmp_path):
    # From the repository root (where `kernels/` lies on sys.path) and from elsewhere: `kernels`
    # is either absent or an inert namespace-like module, and transformers' probe for Hugging
    # Face's `kernels` package does not mistake it for an install (nor crash on it).
    code = (
        "import importlib.util\n"
        "try:\n"
        "    import kernels\n"
        "except ImportError:\n"
        "    print('absent')\n"
        "else:\n"
        "    public = [n for n in vars(kernels) if not n.startswith('__')]\n"
        "    print('inert' if kernels.__file__ is None and not public else kernels.__file__)\n"
        "from transformers.utils import is_kernels_available\n"
        "import transformers.models.llama.configuration_llama\n"
        "print('hf kernels:', is_kernels_available())\n"
    )
    hf_kernels = importlib.util.find_spec("kernels") is not None
    for cwd in (REPO, tmp_path):
        result = run_python(code, cwd)
        assert result.returncode == 0, result.stderr
        first, second = result.stdout.splitlines()
        assert first in ("absent", "inert") or (hf_kernels and str(REPO) not in first), first
        if not hf_kernels:
            assert second == "hf kernels: False"


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

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import cd_fast, cd_fast.kernels, cd_fast._C\n"
        "print(cd_fast.__file__)\n"
        "print(cd_fast.segment_steps(['One sentence here. Another one follows.'])[0].tolist())\n"
    )
    result = run_python(code, tmp_path, env={"PYTHONPATH": str(site), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stdout and "[[0, 19], [19, 39]]" in result.stdout
