"""Loads the C++ extension `cd_fast._C`, or says how to build it."""

from __future__ import annotations

import functools
from types import ModuleType

BUILD_HINT = (
    "the C++ extension cd_fast._C is not built. From the project root run "
    "`pip install -e .` (or `python setup.py build_ext --inplace`); it needs a C++17 compiler "
    "and pybind11 (`pip install pybind11`)."
)


@functools.cache
def load_extension() -> ModuleType:
    try:
        from cd_fast import _C
    except ImportError as error:
        raise ImportError(f"{BUILD_HINT} ({error})") from error
    return _C
