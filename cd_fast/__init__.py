"""cd_fast: performance-first reasoning-trace compression and distillation."""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_CHECKOUT_FOLDERS = {"cd_fast.kernels": "kernels", "cd_fast.bench": "bench"}


class _CheckoutFolders(importlib.abc.MetaPathFinder):
    """Maps the checkout's top-level kernels/ and bench/ folders in as cd_fast.kernels and
    cd_fast.bench, as setup.py's package_dir does in a wheel or an editable install. Needed when
    python runs from the repository root without an editable install of this checkout (a wheel
    installed elsewhere): the root's cd_fast/ is imported then, and it has neither subfolder."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        folder = _CHECKOUT_FOLDERS.get(fullname)
        init = self.root / folder / "__init__.py" if folder else None
        if init is None or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


_root = Path(__file__).resolve().parent.parent
if (_root / "setup.py").is_file() and not any(
    isinstance(finder, _CheckoutFolders) for finder in sys.meta_path
):
    sys.meta_path.append(_CheckoutFolders(_root))  # last: an installed package is found first

from cd_fast._version import __version__  # noqa: E402
from cd_fast.segment import SegmentConfig, segment_steps  # noqa: E402

__all__ = ["SegmentConfig", "__version__", "segment_steps"]
