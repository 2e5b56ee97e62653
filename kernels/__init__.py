"""cd_fast.kernels: Triton kernels and their pure-torch references (`cd_fast.kernels.reference`).

Installed only as the subpackage ``cd_fast.kernels``.
"""

if __name__ != "cd_fast.kernels":
    # This folder was imported under another name because the repository root is on sys.path
    # (python run from the checkout). `kernels` belongs to a Hugging Face package that
    # transformers requires: load that package in our place (the import statement returns what
    # sys.modules holds once this file has run). Without it, look like an empty namespace (no
    # file, no version, no names), which transformers' probe reads as "not installed".

    def _load_in_our_place(name: str) -> bool:
        """Loads the package `name` names when this folder's parent is off sys.path into
        sys.modules[name]; False if there is none."""
        import importlib.machinery
        import importlib.util
        import os
        import sys

        ours = os.path.realpath(__file__)
        shadowing = os.path.dirname(os.path.dirname(ours))
        path = [p for p in sys.path if os.path.realpath(p or os.curdir) != shadowing]
        for finder in sys.meta_path:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(name, path)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, None)
            else:
                continue
            if spec is not None and spec.origin and os.path.realpath(spec.origin) != ours:
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
                return True
        return False

    if "." in __name__ or not _load_in_our_place(__name__):
        __file__ = None
        __path__ = []
    del _load_in_our_place
else:
    from cd_fast.kernels.causal_conv1d import causal_conv1d_varlen
    from cd_fast.kernels.linear_cross_entropy import linear_cross_entropy
    from cd_fast.kernels.outputs import IGNORE_INDEX, PackedBatch, StaticShape, TokenScores
    from cd_fast.kernels.pack import TokenStore, label_token_count, pack_sequences
    from cd_fast.kernels.token_scores import token_scores

    __all__ = [
        "IGNORE_INDEX",
        "PackedBatch",
        "StaticShape",
        "TokenScores",
        "TokenStore",
        "causal_conv1d_varlen",
        "label_token_count",
        "linear_cross_entropy",
        "pack_sequences",
        "token_scores",
    ]
