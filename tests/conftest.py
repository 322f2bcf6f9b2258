from __future__ import annotations

import os

import torch

# Triton kernels run on CPU tensors under the interpreter; it must be chosen
# before any kernel module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

from drcl_fast.config import DRCLConfig  # noqa: E402
from drcl_fast.data import load_mfeat  # noqa: E402
from drcl_fast.retrieval import cpp  # noqa: E402

# Set by `make test` and CI: what would otherwise skip tests must be there.
REQUIRE_EXTENSIONS = os.environ.get("DRCL_FAST_REQUIRE_EXTENSIONS") == "1"


def missing_extensions() -> list[str]:
    """The optional parts this process lacks, each with what to do about it."""
    missing = []
    if not cpp.AVAILABLE:
        missing.append("the C++ extension drcl_fast._map_cpp is not built (reinstall with `pip install -e .` "
                       "and read the compiler's error, or `make clean test`)")
    if importlib.util.find_spec("triton") is None:
        missing.append("Triton is not installed (`pip install -e '.[test]'`)")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_EXTENSIONS and missing_extensions():
        raise pytest.UsageError("DRCL_FAST_REQUIRE_EXTENSIONS=1, but " + "; ".join(missing_extensions()))


@pytest.fixture(scope="session")
def mfeat():
    return load_mfeat()


@pytest.fixture
def tiny_config(tmp_path) -> DRCLConfig:
    """A seconds-long run on the bundled data: small encoders, few epochs."""
    return DRCLConfig.preset("mfeat", epochs=4, hidden_shape=32, output_shape=16, batch_size=200,
                             out=str(tmp_path / "out"), quiet=True, device="cpu")
