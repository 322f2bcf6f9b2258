"""Shared by the kernel tests: the tolerance rule, the device, fresh inputs.

Tolerance rule (docs/design.md section 7, flash-attention's): against a float64
reference, a fast path's relative error ||out - ref|| / ||ref|| may be at most
twice PyTorch's own float32 error on the same inputs, plus two float32 epsilons:
on a scalar such as J_D, PyTorch's error is sometimes far below one rounding by
luck, and a different but equally sound order of float32 operations lands
within about one epsilon; the floor keeps the bar at what float32 can promise.
The same rule holds element by element, so that one wrong tile (at a partial edge,
say) is not diluted by a whole tensor's norm: max |out - ref| at most ELEMENT_FACTOR
times PyTorch's own largest float32 error, plus two float32 epsilons of the
tensor's largest magnitude (of 1 where the reference is all zeros). float64 runs must match to 1e-10.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

EPS32 = torch.finfo(torch.float32).eps
ELEMENT_FACTOR = 4.0   # the largest of many roundings varies more than their norm: measured up to 1.9x here
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


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref.double().cpu()).abs().max())


def assert_within_rule(fast: list[torch.Tensor], torch32: list[torch.Tensor], ref64: list[torch.Tensor],
                       names: list[str]) -> None:
    """Every output of a float32 fast path against the rule above, as a whole and element by element."""
    for name, f, p, r in zip(names, fast, torch32, ref64):
        bound = 2 * rel_err(p, r) + 2 * EPS32
        assert rel_err(f, r) <= bound, f"{name}: error {rel_err(f, r):.3g} > {bound:.3g} (torch {rel_err(p, r):.3g})"
        assert_elementwise_within_rule(name, f, p, r)


def assert_elementwise_within_rule(name: str, fast: torch.Tensor, torch32: torch.Tensor, ref64: torch.Tensor) -> None:
    """max |fast - ref| <= ELEMENT_FACTOR * max |torch32 - ref| + 2 eps32 max |ref| (2 eps32 where ref is all
    zeros, as rel_err turns absolute there), naming the worst element."""
    errors = (fast.double().cpu() - ref64.double().cpu()).abs()
    scale = float(ref64.abs().max())
    bound = ELEMENT_FACTOR * max_abs_err(torch32, ref64) + 2 * EPS32 * (scale if scale > 0 else 1.0)
    worst = tuple(int(i) for i in np.unravel_index(int(errors.argmax()), errors.shape))
    assert errors.max() <= bound, (f"{name}: element {worst} off by {float(errors.max()):.3g} > {bound:.3g} "
                                   f"(torch's largest error {max_abs_err(torch32, ref64):.3g})")


def assert_float64_equal(fast: list[torch.Tensor], ref64: list[torch.Tensor], names: list[str]) -> None:
    for name, f, r in zip(names, fast, ref64):
        assert rel_err(f, r) <= 1e-10, f"{name}: float64 error {rel_err(f, r):.3g}"


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
