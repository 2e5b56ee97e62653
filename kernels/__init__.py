"""cd_fast.kernels: Triton kernels and their pure-torch references.

Installed only as the subpackage ``cd_fast.kernels``. The top-level name ``kernels`` belongs to a
Hugging Face package that transformers and bitsandbytes probe for, so importing this folder under
that name (for example from the repository root) is refused.
"""

if __name__ != "cd_fast.kernels":
    raise ImportError(
        f"this folder is cd_fast.kernels and cannot be imported as {__name__!r}; "
        "`import cd_fast.kernels` after `pip install -e .`"
    )
