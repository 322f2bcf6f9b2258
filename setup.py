"""Builds the optional C++ extension drcl_fast._map_cpp; the metadata is in pyproject.toml.

A failed build does not fail the install: the package then runs the PyTorch
reference on the CPU and says so once (see csrc/README.md). With
DRCL_FAST_REQUIRE_EXTENSIONS=1 (set by `make test` and CI) it does fail, so
that a broken extension cannot hide behind skipped tests.
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
            sys.exit("error: pybind11 is not installed, and DRCL_FAST_REQUIRE_EXTENSIONS=1 requires drcl_fast._map_cpp")
        print("warning: pybind11 is not installed; drcl_fast._map_cpp is not built", file=sys.stderr)
        return []
    # -O3 without -march=native or -ffast-math: the wheel must run on other CPUs and
    # keep IEEE comparisons, which the exact tie rule depends on.
    return [Pybind11Extension("drcl_fast._map_cpp", ["csrc/map_rank.cpp"], depends=["csrc/rank.h"], cxx_std=17,
                              extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])]


if build_ext is not None:
    class OptionalBuildExt(build_ext):
        """Warn instead of failing when the compiler or OpenMP is missing."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any build failure leaves the pure-Python package
                self._remove_stale_builds()
                if REQUIRED:
                    raise
                self.warn(f"drcl_fast._map_cpp was not built ({error}); the cpp backend will be unavailable")

        def _remove_stale_builds(self) -> None:
            """An earlier build left in place would be imported as if this one had worked."""
            for ext in self.extensions:
                for inplace in (0, 1):
                    self.inplace = inplace
                    Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)

    setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
else:
    setup()
