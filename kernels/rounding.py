"""Division and square root rounded to nearest, for the float32 and float64 kernel paths alike.

On a GPU, float32 ``a / b`` compiles to ``div.full.f32`` (2 ulp) and ``tl.sqrt`` to
``sqrt.approx.ftz.f32``; the interpreter (CI on CPUs) computes both exactly, as the
float64 reference and PyTorch's float32 do. float64 ``/`` and ``tl.sqrt`` are already
IEEE (``div.rn.f64``, ``sqrt.rn.f64``), and Triton's precise forms take float32 only.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def div_rn(a, b):
    """a / b rounded to nearest (b a tensor)."""
    if b.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)   # not tl.fdiv(ieee_rounding=True): Triton 3.6 ignores the flag


@triton.jit
def sqrt_rn(x):
    """sqrt(x) rounded to nearest."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)
