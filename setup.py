"""Builds the optional C++ extensions; the metadata is in pyproject.toml.

- drcl_fast.retrieval._map_cpp (csrc/map_rank.cpp): MAP ranking and the top-k merge, pybind11 over numpy buffers;
- drcl_fast.training._step_cpp (csrc/train_step.cpp): the CPU training step, against torch's C++
  API, so torch must be importable where it builds: `make install` runs pip with
  --no-build-isolation for that (an isolated build has no torch, and skips it).

A failed build does not fail the install: the package then runs the PyTorch
code instead and says so (see csrc/README.md). With DRCL_FAST_REQUIRE_EXTENSIONS=1
(set by `make test` and CI) it does fail, so that a broken extension cannot hide
behind skipped tests.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # only when setup.py runs outside pip's build environment
    Pybind11Extension = build_ext = None


REQUIRED = os.environ.get("DRCL_FAST_REQUIRE_EXTENSIONS") == "1"


def extensions() -> list:
    if Pybind11Extension is None:
        if REQUIRED:
            sys.exit("error: pybind11 is not installed, and DRCL_FAST_REQUIRE_EXTENSIONS=1 requires drcl_fast.retrieval._map_cpp")
        print("warning: pybind11 is not installed; drcl_fast.retrieval._map_cpp is not built", file=sys.stderr)
        return []
    # -O3 without -march=native or -ffast-math: the wheel must run on other CPUs and
    # keep IEEE comparisons, which the exact tie rule depends on.
    ranking = Pybind11Extension("drcl_fast.retrieval._map_cpp", ["csrc/map_rank.cpp"], depends=["csrc/rank.h", "csrc/topk.h"],
                                cxx_std=17, extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])
    return [ranking, *step_extension()]


def step_extension() -> list:
    """drcl_fast.training._step_cpp, built against the torch this build imports (torch's extension flags by hand,
    since one build command serves both extensions); none where torch is not importable."""
    try:
        import torch
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        if REQUIRED:
            sys.exit("error: torch is not importable in this build, and DRCL_FAST_REQUIRE_EXTENSIONS=1 requires "
                     "drcl_fast.training._step_cpp: install torch first, then pip install --no-build-isolation -e .")
        print("warning: torch is not importable in this build (pip's isolated build environment); "
              "drcl_fast.training._step_cpp is not built: pip install --no-build-isolation builds it", file=sys.stderr)
        return []
    flags = ["-O3", "-std=c++20", "-DTORCH_EXTENSION_NAME=_step_cpp", "-DTORCH_API_INCLUDE_EXTENSION_H",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    return [CppExtension("drcl_fast.training._step_cpp", ["csrc/train_step.cpp"], extra_compile_args=flags)]


if build_ext is not None:
    class OptionalBuildExt(build_ext):
        """Warn instead of failing when the compiler, OpenMP or torch's headers are missing: one
        extension that fails leaves the others built."""

        def initialize_options(self) -> None:
            super().initialize_options()
            self.failed: set[str] = set()

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as error:  # noqa: BLE001 - any build failure leaves the pure-Python path
                self._remove_stale_build(ext)
                if REQUIRED:
                    raise
                self.failed.add(ext.name)
                self.warn(f"{ext.name} was not built ({error}); the package runs its Python code instead")

        # What is copied or installed afterwards: the extensions that built.
        def copy_extensions_to_source(self) -> None:
            self._without_failed(super().copy_extensions_to_source)

        def get_outputs(self) -> list:
            return self._without_failed(super().get_outputs)

        def get_output_mapping(self) -> dict:
            return self._without_failed(super().get_output_mapping)

        def _without_failed(self, method):
            every = self.extensions
            self.extensions = [ext for ext in every if ext.name not in self.failed]
            try:
                return method()
            finally:
                self.extensions = every

        def _remove_stale_build(self, ext) -> None:
            """An earlier build left in place would be imported as if this one had worked."""
            inplace = self.inplace
            for self.inplace in (0, 1):
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.inplace = inplace

    setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
else:
    setup()
