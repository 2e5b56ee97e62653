import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter; set before anything imports triton
# (kernels are bound to the interpreter when decorated). On a GPU machine they compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA
