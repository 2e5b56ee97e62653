"""cd_fast.kernels: Triton kernels and their pure-torch references (`cd_fast.kernels.reference`).

Installed only as the subpackage ``cd_fast.kernels``.
"""

if __name__ != "cd_fast.kernels":
    # This folder was imported as the top-level `kernels` because the repository root is on
    # sys.path (python run from the checkout). That name belongs to a Hugging Face package that
    # transformers and bitsandbytes probe for: look like an empty namespace (no file, no
    # submodules), which their probes read as "not installed", and run none of our code.
    __file__ = None
    __path__ = []
else:
    from cd_fast.kernels.causal_conv1d import causal_conv1d_varlen
    from cd_fast.kernels.pack import (
        IGNORE_INDEX,
        PackedBatch,
        TokenStore,
        label_token_count,
        pack_sequences,
    )
    from cd_fast.kernels.token_scores import TokenScores, token_scores

    __all__ = [
        "IGNORE_INDEX",
        "PackedBatch",
        "TokenScores",
        "TokenStore",
        "causal_conv1d_varlen",
        "label_token_count",
        "pack_sequences",
        "token_scores",
    ]
