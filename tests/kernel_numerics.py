"""Shared by the kernel tests: the tolerance rule, the device, fresh inputs.

Tolerance rule (DESIGN.md section 7, flash-attention's): against a float64
reference, a fast path's relative error ||out - ref|| / ||ref|| may be at most
twice PyTorch's own float32 error on the same inputs, plus two float32 epsilons:
on a scalar such as J_D, PyTorch's error is sometimes far below one rounding by
luck, and a different but equally sound order of float32 operations lands
within about one epsilon; the floor keeps the bar at what float32 can promise.
float64 runs must match to 1e-10.
"""
from __future__ import annotations

import pytest
import torch

EPS32 = torch.finfo(torch.float32).eps
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # the Triton interpreter runs CPU tensors

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    scale = ref.norm()
    return float((out - ref).norm() / scale) if scale > 0 else float((out - ref).norm())


def assert_within_rule(fast: list[torch.Tensor], torch32: list[torch.Tensor], ref64: list[torch.Tensor],
                       names: list[str]) -> None:
    """Every output of a float32 fast path against the rule above."""
    for name, f, p, r in zip(names, fast, torch32, ref64):
        bound = 2 * rel_err(p, r) + 2 * EPS32
        assert rel_err(f, r) <= bound, f"{name}: error {rel_err(f, r):.3g} > {bound:.3g} (torch {rel_err(p, r):.3g})"


def assert_float64_equal(fast: list[torch.Tensor], ref64: list[torch.Tensor], names: list[str]) -> None:
    for name, f, r in zip(names, fast, ref64):
        assert rel_err(f, r) <= 1e-10, f"{name}: float64 error {rel_err(f, r):.3g}"


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
