"""Builds the C++ extension cd_fast._C and maps the top-level kernels/ and bench/ folders into
the package as cd_fast.kernels and cd_fast.bench. The top-level name `kernels` belongs to Hugging
Face's package, which transformers requires: kernels/__init__.py hands that name to it when
python runs from the repository root, and cd_fast/__init__.py maps both folders in for a
checkout run from its root without an editable install (keep the two mappings the same)."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

native = Pybind11Extension(
    "cd_fast._C",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    depends=sorted(glob("csrc/*.hpp")),
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(
    packages=[*find_packages(include=["cd_fast", "cd_fast.*"]), "cd_fast.kernels", "cd_fast.bench"],
    package_dir={"cd_fast.kernels": "kernels", "cd_fast.bench": "bench"},
    package_data={"cd_fast.compress": ["prompts/*.txt"]},
    ext_modules=[native],
    cmdclass={"build_ext": build_ext},
)
