"""Linear + ReLU with the bias and the ReLU in the GEMM's epilogue, forward and backward.

Forward: ``y = relu(x W^T + b)`` in one Triton GEMM (``matmul.py``). Backward: the
ReLU's mask is applied as the gradient is loaded by each GEMM (``gate``), so
``dx = (g * [y > 0]) W`` and ``dW = (g * [y > 0])^T x`` need no masked copy of g;
``dx`` is skipped when x needs no gradient (the encoder's input).

``impl="vendor"`` runs the same layer on cuBLAS instead: the forward through
``torch._addmm_activation`` (cuBLASLt's bias+ReLU epilogue), the backward as plain
GEMMs on a masked gradient. The GPU suite (bench/gpu/gpu_train.py) times both in the
whole RSC step; ``DEFAULT_IMPL`` stays the Triton GEMM unless a GPU run shows the
vendor one faster (docs/kernels.md).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor

from drcl_fast.kernels import custom_op, probe_inputs
from drcl_fast.kernels.boundary import ROWS, Args
from drcl_fast.kernels.matmul import matmul
from drcl_fast.kernels.precision import get_precision
from drcl_fast.runtime import selfcheck

IMPLS = ("triton", "vendor")
DEFAULT_IMPL = "triton"


@contextlib.contextmanager
def _vendor_precision() -> Iterator[None]:
    """cuBLAS at the kernels' precision ("bf16" is handled by casting the operands)."""
    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32
    flags.allow_tf32 = get_precision() != "fp32"
    try:
        yield
    finally:
        flags.allow_tf32 = before


def _vendor_operands(*tensors: torch.Tensor) -> list[torch.Tensor]:
    low = get_precision() == "bf16" and tensors[0].dtype == torch.float32
    return [t.to(torch.bfloat16) if low else t for t in tensors]


def _check_layer(launcher: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """x (B x d_in), weight (H x d_in), bias (H, unit stride: the GEMM's epilogue reads it so): one float
    dtype and device."""
    args = Args(launcher)
    args.tensor("x", x, "B d_in")
    args.tensor("weight", weight, "H d_in", "x")
    args.tensor("bias", bias, "H", "x", layout=ROWS)


def linear_relu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
    """``relu(x W^T + b)`` by `impl`."""
    _check_layer("linear_relu_forward", x, weight, bias)
    if impl == "triton":
        return matmul(x, weight.t(), bias=bias, relu=True)
    with _vendor_precision():
        b, a, w = _vendor_operands(bias, x, weight)
        return torch._addmm_activation(b, a, w.t()).to(x.dtype)


def linear_relu_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                         impl: str, need_dx: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx or None, dW, db) of ``relu(x W^T + b)``, whose output was `out`.

    `grad` (B x H), `x` (B x d_in), `weight` (H x d_in): one float dtype; `out` (B x H), read as a mask,
    any; one device, any strides.
    """
    args = Args("linear_relu_backward")
    args.tensor("grad", grad, "B H")
    args.tensor("x", x, "B d_in", "grad")
    args.tensor("weight", weight, "H d_in", "grad")
    args.tensor("out", out, "B H", None)
    grad, out = grad.contiguous(), out.contiguous()   # the gate (out) must share the gradient's strides
    if impl == "triton":
        dx = matmul(grad, weight, gate=out) if need_dx else None
        dw = matmul(grad.t(), x, gate=out.t())
        return dx, dw, torch.where(out > 0, grad, 0.0).sum(dim=0)
    masked = torch.where(out > 0, grad, 0.0)
    with _vendor_precision():
        g, w, a = _vendor_operands(masked, weight, x)
        dx = (g @ w).to(x.dtype) if need_dx else None
        return dx, (g.t() @ a).to(x.dtype), masked.sum(dim=0)


class LinearReLU(torch.autograd.Function):
    """relu(x W^T + b) with fused epilogues; `impl` is "triton" or "vendor"."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
        out = linear_relu_forward(x, weight, bias, impl)
        ctx.impl = impl
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        dx, dw, db = linear_relu_backward(grad, x, weight, out, ctx.impl, ctx.needs_input_grad[0])
        return dx, dw, db, None


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str | None = None
                ) -> torch.Tensor:
    """``torch.relu(torch.nn.functional.linear(x, weight, bias))`` through the fused kernels.

    `impl` None: this module's ``DEFAULT_IMPL``, read at each call.
    """
    impl = DEFAULT_IMPL if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    _check_layer("linear_relu", x, weight, bias)
    return LinearReLU.apply(x, weight, bias, impl)


def _custom_op() -> Callable | None:
    """The layer as the custom ops ``drcl_fast::linear_relu`` and ``linear_relu_backward`` (``custom_op.py``),
    at ``DEFAULT_IMPL``; None where torch has none."""
    if not custom_op.AVAILABLE:
        return None

    @torch.library.custom_op("drcl_fast::linear_relu", mutates_args=())
    def forward(x: Tensor, weight: Tensor, bias: Tensor, impl: str) -> Tensor:
        return linear_relu_forward(x, weight, bias, impl)

    @forward.register_fake
    def _(x, weight, bias, impl):
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.custom_op("drcl_fast::linear_relu_backward", mutates_args=())
    def backward_op(grad: Tensor, x: Tensor, weight: Tensor, out: Tensor, impl: str, need_dx: bool
                    ) -> tuple[Tensor, Tensor, Tensor]:
        dx, dw, db = linear_relu_backward(grad, x, weight, out, impl, need_dx)
        return (x.new_empty(0) if dx is None else dx), dw, db

    @backward_op.register_fake
    def _(grad, x, weight, out, impl, need_dx):
        return (torch.empty_like(x) if need_dx else x.new_empty(0)), torch.empty_like(weight), \
            weight.new_empty(weight.shape[0])

    def setup(ctx, inputs, output):
        x, weight, _, ctx.impl = inputs
        ctx.save_for_backward(x, weight, output)

    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dw, db = backward_op(grad, x, weight, out, ctx.impl, need_dx)
        return (dx if need_dx else None), dw, db, None

    forward.register_autograd(backward, setup_context=setup)
    return lambda x, weight, bias: forward(x, weight, bias, DEFAULT_IMPL)


# What dispatch hands out: the Function eagerly, the custom op while torch.compile traces.
entry = custom_op.eager_or_compiled(linear_relu, _custom_op())


def _probe(device: torch.device):
    """The self-check: `entry` against the float64 reference, the output and the three gradients."""
    from drcl_fast.ops import reference   # on use: drcl_fast.ops imports this module
    g = torch.Generator().manual_seed(103)
    x, weight, grad = (probe_inputs.dyadic(g, *shape) for shape in ((5, 9), (7, 9), (5, 7)))
    bias = probe_inputs.dyadic(g, 7) + 1 / 128   # no pre-activation is exactly 0: the ReLU's mask is unambiguous
    fast, ref = {}, {}
    for out, impl, double in ((fast, entry, False), (ref, reference.linear_relu, True)):
        leaves = probe_inputs.leaves(device, x, weight, bias, double=double)
        y = impl(*leaves)
        out["output"] = y
        out["dx"], out["dW"], out["db"] = torch.autograd.grad(y, leaves, grad.to(device, y.dtype))
    return fast, ref, 1e-4


selfcheck.register("linear_relu", _probe)
