"""Compile Triton kernels for GPU targets on a CPU-only machine and print what ptxas made of them.

    python tests/compile_kernels.py [capability ...]     (default: 80 90)

One JSON line per compiled case: kernel, capability, dtype, the launcher's constexprs, and the
cubin's resource usage (registers, stack bytes = spilled registers, shared memory). Runs in its
own process because kernels decorated under TRITON_INTERPRET=1 cannot be compiled.
The tests (test_causal_conv1d.py) assert no spills and shared memory within the target's limit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_kernels.py: unset TRITON_INTERPRET (interpreted kernels cannot compile)")

from cd_fast.kernels import causal_conv1d

DTYPES = {"bf16": "*bf16", "fp32": "*fp32"}  # fp16 compiles as bf16 does


def conv_cases():
    """The causal conv1d kernels at the tile shapes their launchers use, W = 4 (Qwen3.5):
    Qwen3.5's case (no bias, SiLU) and the two other branches."""
    for dtype, pointer in DTYPES.items():
        for has_bias, silu in ((False, True), (True, True), (False, False)):
            inputs = dict.fromkeys(["p_x", "p_weight", "p_bias"], pointer)
            flags = {"W": 4, "HAS_BIAS": has_bias, "SILU": silu}
            forward = {
                **inputs,
                "p_cu_seqlens": "*i32",
                "p_y": pointer,
                **dict.fromkeys(["T", "D", "N", "SEARCH_STEPS", "stride_x", "stride_y"], "i32"),
            }
            tiles = {"BLOCK_T": causal_conv1d.FWD_BLOCK_T, "BLOCK_D": causal_conv1d.FWD_BLOCK_D}
            yield (
                causal_conv1d._causal_conv1d_fwd_kernel,
                dtype,
                forward,
                {**flags, **tiles},
                causal_conv1d.FWD_WARPS,
            )
            backward = {
                **inputs,
                "p_cu_seqlens": "*i32",
                "p_dy": pointer,
                "p_dx": pointer,
                "p_dweight_parts": "*fp32",
                "p_dbias_parts": "*fp32",
                **dict.fromkeys(["T", "D", "N", "SEARCH_STEPS", "TILES_PER_PROGRAM"], "i32"),
                **dict.fromkeys(["stride_x", "stride_dy", "stride_dx"], "i32"),
            }
            tiles = {"BLOCK_T": causal_conv1d.BWD_BLOCK_T, "BLOCK_D": causal_conv1d.BWD_BLOCK_D}
            yield (
                causal_conv1d._causal_conv1d_bwd_kernel,
                dtype,
                backward,
                {**flags, "BLOCK_W": 4, **tiles},
                causal_conv1d.BWD_WARPS,
            )


def resources(cubin: bytes) -> dict[str, int]:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run(
            [cuobjdump, "--dump-resource-usage", file.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", usage))
    return {
        "registers": int(fields["REG"]),
        "stack": int(fields["STACK"]),
        "shared": int(fields["SHARED"]),
    }


def main(capabilities: list[int]) -> None:
    for capability in capabilities:
        for kernel, dtype, signature, constexprs, warps in conv_cases():
            for name in constexprs:
                signature[name] = "constexpr"
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": warps},
            )
            row = {
                "kernel": kernel.__name__,
                "capability": capability,
                "dtype": dtype,
                "constexprs": constexprs,
                **resources(compiled.asm["cubin"]),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(c) for c in sys.argv[1:]] or [80, 90])
