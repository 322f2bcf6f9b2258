"""The matrix-math precision of the Triton kernels: "fp32" (default), "tf32" or "bf16".

Operands and outputs stay float32 whatever is chosen; it picks what the tensor
cores multiply: float32 exactly ("fp32", IEEE products on the CUDA cores),
TF32 (10-bit mantissas, float32 accumulation) or bfloat16 (float32 accumulation).
float64 inputs are always multiplied exactly. The PyTorch reference is not
affected: it follows torch's own settings. The encoder GEMM picks its block
configurations by the result (kernels/matmul.py ``config_kind``: "fp32" runs on
the FMA units with short BLOCK_K tiles that do not spill).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from drcl_fast.config import DEFAULT_PRECISION, PRECISIONS

# A run sets it for its length (drcl_fast.runtime.precision.matrix_precision); kernel tests and benchmarks
# through the `precision` context.
_current = [DEFAULT_PRECISION]


def get_precision() -> str:
    return _current[0]


def set_precision(name: str) -> None:
    """Choose the Triton kernels' matrix precision for this process."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    _current[0] = name


@contextlib.contextmanager
def precision(name: str) -> Iterator[None]:
    """Run a block with another matrix precision, then restore the previous one."""
    before = get_precision()
    set_precision(name)
    try:
        yield
    finally:
        set_precision(before)


def dot_precision(is_float64: bool) -> str:
    """The `tl.dot` mode for the current precision ("bf16" casts the operands itself)."""
    if is_float64 or _current[0] == "fp32":
        return "ieee"
    return "bf16" if _current[0] == "bf16" else "tf32"


def dot_args(dtype: torch.dtype) -> dict[str, object]:
    """The ``PRECISION`` (the `tl.dot` mode) and ``ACC`` (the accumulator's type) constexprs of a kernel
    whose operands are `dtype`, as ``matmul.mma`` takes them."""
    import triton.language as tl   # here: this module also serves CPU runs, where Triton may be missing
    double = dtype == torch.float64
    return {"PRECISION": dot_precision(double), "ACC": tl.float64 if double else tl.float32}
