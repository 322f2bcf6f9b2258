from __future__ import annotations

import os

import torch

# Triton kernels run on CPU tensors under the interpreter; it must be chosen
# before any kernel module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from drcl_fast.config import DRCLConfig  # noqa: E402
from drcl_fast.data import load_mfeat  # noqa: E402


@pytest.fixture(scope="session")
def mfeat():
    return load_mfeat()


@pytest.fixture
def tiny_config(tmp_path) -> DRCLConfig:
    """A seconds-long run on the bundled data: small encoders, few epochs."""
    return DRCLConfig.preset("mfeat", epochs=4, hidden_shape=32, output_shape=16, batch_size=200,
                             out=str(tmp_path / "out"), quiet=True, device="cpu")
