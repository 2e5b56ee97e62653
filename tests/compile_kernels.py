"""Compile Triton kernels for GPU targets on a CPU-only machine and print what ptxas made of them.

    python tests/compile_kernels.py [capability ...]     (default: 80 90)

One JSON line per compiled case: kernel, capability, dtype, the launcher's constexprs, and the
cubin's resource usage (registers, stack bytes = spilled registers, shared memory). Every
@triton.jit kernel of cd_fast.kernels is compiled at the block sizes, warps and dtypes its
launcher uses. Runs in its own process because kernels decorated under TRITON_INTERPRET=1
cannot be compiled. test_kernel_compile.py asserts that every kernel is covered, none spills and
each fits the target's shared memory.
"""

from __future__ import annotations

import importlib
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

# modules, not the functions cd_fast.kernels exports under the same names
causal_conv1d = importlib.import_module("cd_fast.kernels.causal_conv1d")
pack = importlib.import_module("cd_fast.kernels.pack")
lm_head = importlib.import_module("cd_fast.kernels.lm_head")
token_scores = importlib.import_module("cd_fast.kernels.token_scores")

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


def pack_cases():
    """The pack kernel at its largest tile (sequences >= 1024 tokens), both store dtypes."""
    for dtype, store in (("int64", "*i64"), ("int32", "*i32")):
        signature = {
            "p_store": store,
            "p_meta": "*i64",
            **dict.fromkeys(["p_input_ids", "p_labels", "p_position_ids"], "*i64"),
            "p_cu_seqlens": "*i32",
            "B": "i32",
        }
        constexprs = {"BLOCK_T": 1024, "IGNORE": pack.IGNORE_INDEX}
        yield pack._pack_kernel, dtype, signature, constexprs, 4


# A Qwen vocabulary: the row kernels' V and row strides at their real launch (a multiple of 16,
# which Triton specialises as divisible by 16).
VOCAB = 151_936


def lm_head_cases():
    """The shared row reduction at a 151,936-token vocabulary (BLOCK_V 4096): scoring
    (surprisal + entropy), the loss with its gradient in bf16 and in place over fp32 logits."""
    signature = {
        "p_logits": "*fp32",
        "p_targets": "*i64",
        "p_nll": "*fp32",
        "p_entropy": "*fp32",
        "p_grad": "*fp32",
        **dict.fromkeys(["V", "stride_t", "stride_g"], "i32"),
    }
    values = {"V": VOCAB, "stride_t": VOCAB, "stride_g": VOCAB}
    block = {"BLOCK_V": lm_head.MAX_BLOCK_V, "IGNORE": lm_head.IGNORE_INDEX}
    for dtype, entropy, grad in (
        ("fp32", True, False),
        ("bf16", False, True),
        ("fp32", False, True),
    ):
        yield (
            lm_head._lm_head_rows_kernel,
            dtype,
            {**signature, "p_grad": DTYPES[dtype]},
            {**block, "HAS_ENTROPY": entropy, "HAS_GRAD": grad},
            {"num_warps": 4, "values": values},
        )


def token_scores_cases():
    """Every fused tile shape the benchmark sweeps (bf16, the default also fp32) and the merge
    kernel (the split method's reduction is lm_head's)."""
    ignore = token_scores.IGNORE_INDEX
    for name, config in token_scores.FUSED_CONFIGS.items():
        dtypes = ("bf16", "fp32") if name == token_scores.DEFAULT_FUSED else ("bf16",)
        for dtype in dtypes:
            pointer = DTYPES[dtype]
            signature = {
                "p_hidden": pointer,
                "p_weight": pointer,
                "p_targets": "*i64",
                "p_stats": "*fp32",
                "p_target_logit": "*fp32",
                **dict.fromkeys(["T", "V", "H", "stride_ht", "stride_wv", "n_blocks_v"], "i32"),
            }
            constexprs = {
                "BLOCK_T": config.block_t,
                "BLOCK_V": config.block_v,
                "BLOCK_H": config.block_h,
                "GROUP_T": 8,
                "IGNORE": ignore,
                "PRECISION": "ieee" if dtype == "fp32" else "tf32",
                "UPCAST": False,
            }
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            yield token_scores._token_scores_fused_kernel, dtype, signature, constexprs, options
    merge = {
        "p_stats": "*fp32",
        "p_target_logit": "*fp32",
        "p_targets": "*i64",
        "p_surprisal": "*fp32",
        "p_entropy": "*fp32",
        "T": "i32",
        "n_blocks_v": "i32",
    }
    constexprs = {"BLOCK_T": 64, "BLOCK_N": 32, "IGNORE": ignore}
    yield token_scores._token_scores_merge_kernel, "fp32", merge, constexprs, 4


def resources(cubin: bytes, dynamic_shared: int) -> dict[str, int]:
    """Registers per thread, stack bytes (spills) and shared memory per block: the cubin's
    static allocation plus what Triton asks for at launch."""
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
        "shared": int(fields["SHARED"]) + dynamic_shared,
    }


def specialisation(kernel, signature: dict[str, str], values: dict[str, int]) -> dict:
    """The divisibility hints Triton's launcher gives this launch: every pointer (torch
    allocations are 16-byte aligned) and every integer argument that is a multiple of 16 at the
    launch (`values`: the real shapes and strides; integers not named are taken as not)."""
    attrs = {}
    for name, kind in signature.items():
        if kind.startswith("*") or (kind == "i32" and values.get(name, 1) % 16 == 0):
            attrs[(kernel.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return attrs


def main(capabilities: list[int]) -> None:
    cases = [*conv_cases(), *pack_cases(), *lm_head_cases(), *token_scores_cases()]
    for capability in capabilities:
        for kernel, dtype, signature, constexprs, options in cases:
            options = dict(options) if isinstance(options, dict) else {"num_warps": options}
            attrs = specialisation(kernel, signature, options.pop("values", {}))
            signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", capability, 32),
                options=options,
            )
            row = {
                "kernel": kernel.__name__,
                "capability": capability,
                "dtype": dtype,
                "constexprs": constexprs,
                **resources(compiled.asm["cubin"], compiled.metadata.shared),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(c) for c in sys.argv[1:]] or [80, 90])
