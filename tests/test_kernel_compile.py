"""Every Triton kernel compiled for sm_80 and sm_90 on this CPU-only machine (no GPU needed),
at the tile shapes, warps and dtypes its launcher uses: it compiles, does not spill registers
and fits the target's shared memory. The interpreter runs kernels that a GPU build rejects."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAPABILITIES = (80, 90)
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block
KERNEL_MODULES = ("causal_conv1d", "lm_head", "pack", "token_scores")
# The fused token-scores GEMM (method="fused", opt-in; split is the default) spills registers
# at every tile shape the benchmark sweeps, and its fp32 tile needs 192 KiB of shared memory
# (over sm_80's 163). Its speed is the GPU issue's to settle; until then this is known.
KNOWN_SPILLS = {"_token_scores_fused_kernel"}


def kernel_names() -> set[str]:
    names = set()
    for module in KERNEL_MODULES:
        members = vars(importlib.import_module(f"cd_fast.kernels.{module}"))
        names |= {name for name in members if re.fullmatch(r"_\w+_kernel", name)}
    return names


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    capabilities = [str(c) for c in CAPABILITIES]
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "compile_kernels.py"), *capabilities],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.slow
def test_every_kernel_compiles_for_each_target(compiled):
    built = {(row["kernel"], row["capability"]) for row in compiled}
    expected = {(name, capability) for name in kernel_names() for capability in CAPABILITIES}
    assert built == expected, f"kernels without a compile case: {expected - built}"


@pytest.mark.slow
def test_no_register_spills_and_shared_memory_fits(compiled):
    for row in compiled:
        if row["kernel"] in KNOWN_SPILLS:
            continue
        assert row["stack"] == 0, f"register spills: {row}"
        assert row["shared"] <= MAX_SHARED[row["capability"]], f"shared memory: {row}"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the fused token-scores GEMM spills (see KNOWN_SPILLS)")
def test_fused_token_scores_kernel_does_not_spill(compiled):
    rows = [row for row in compiled if row["kernel"] in KNOWN_SPILLS]
    assert rows
    for row in rows:
        assert row["stack"] == 0 and row["shared"] <= MAX_SHARED[row["capability"]], row
