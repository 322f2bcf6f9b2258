"""int32 offsets, or int64 for the launches that need them.

A kernel forms its offsets as index * stride. In int32 they wrap once a tensor of the launch reaches
2**31 elements (a million rows at H = 4,096), and the kernel reads and writes the wrong rows. A
launcher passes ``WIDE=wide(...)`` over its tensors, and the kernel takes its indices through
:func:`index`: in a wide launch they are int64, a variant of its own; every other launch compiles
to int32 offsets, as before. int64 offsets in every launch would cost registers, which the
tensor-core GEMM tiles and the float64 GCE, at the cap of 255 a thread, pay in spills
(docs/kernels.md, "Offsets").
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LIMIT = 2**31


def wide(*tensors: torch.Tensor) -> bool:
    """Whether an offset into one of `tensors` can reach 2**31: its largest, from its shape and strides."""
    return any(t.numel() and sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) >= LIMIT
               for t in tensors)


@triton.jit
def index(i, WIDE: tl.constexpr):
    """`i` in int64 in a wide launch, else as it is."""
    if WIDE:
        return i.to(tl.int64)
    else:
        return i
