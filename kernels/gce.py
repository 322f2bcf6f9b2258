"""Generalised cross-entropy against soft targets, its gradient formed in the forward pass.

One program per block of rows, the whole class row in registers: softmax,
``s = sum_c t_c softmax(p)_c``, the loss ``(1 - s^q) / q`` (``-log s`` at q = 0) and
``dGCE/dp_c = -s^(q-1) softmax(p)_c (t_c - s) / B`` (the same expression at q = 0),
so the backward is one scaling. Soft (mixed) and multi-hot targets alike. All of it in
float64 whatever the input dtype (below), rounded once on the store.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from drcl_fast.kernels import custom_op, probe_inputs
from drcl_fast.kernels.boundary import Args
from drcl_fast.kernels.offsets import index, wide
from drcl_fast.runtime import selfcheck

MAX_CLASSES = 16384   # one row of classes in one program's registers


@triton.jit
def _gce_kernel(logits_ptr, targets_ptr, loss_ptr, grad_ptr, B, C, s_p, s_t, s_g, q: tl.float64,
                inv_b: tl.float64, Q_ZERO: tl.constexpr, WIDE: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_C: tl.constexpr):
    rows = index(tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B), WIDE)   # int64 where B x C needs it
    rc = tl.arange(0, BLOCK_C)
    r_ok = rows < B
    c_ok = rc < C
    mask = r_ok[:, None] & c_ok[None, :]
    p = tl.load(logits_ptr + rows[:, None] * s_p + rc[None, :], mask=mask, other=0.0)
    t = tl.load(targets_ptr + rows[:, None] * s_t + rc[None, :], mask=mask, other=0.0)
    # The softmax in float64 whatever the input: a GPU's float32 tl.exp is ex2.approx.f32 of
    # x log2(e) (2 ulp, plus |x| 2^-24 from rounding the product) and its `/` div.full.f32 (2 ulp),
    # where the reference's expf and division are within one rounding. B x C values: small
    # beside the loss's B x B x D work.
    p = tl.where(c_ok[None, :], p.to(tl.float64), float("-inf"))
    e = tl.exp(p - tl.max(p, axis=1)[:, None])
    probs = e / tl.sum(e, axis=1)[:, None]
    s = tl.where(r_ok, tl.sum(t * probs, axis=1), 1.0)   # padded rows: keep log and pow finite
    # s^q and s^(q-1) through exp(log) lose |log s| ulps, and 1 - s^q cancels at small q; in
    # float64 both stay far below float32 rounding. q and 1/B are float64 parameters.
    log_s = tl.log(s)
    if Q_ZERO:
        loss = -log_s
    else:
        loss = (1.0 - tl.exp(q * log_s)) / q
    # s^(q-1) = 1 at q = 1, also at s = 0 (a target row with no class), where (q - 1) log s is NaN
    ds = -tl.exp(tl.where(q == 1.0, 0.0, (q - 1.0) * log_s)) * inv_b
    out = grad_ptr.dtype.element_ty
    tl.store(loss_ptr + rows, loss.to(out), mask=r_ok)
    grad = (ds[:, None] * probs) * (t - s[:, None])
    tl.store(grad_ptr + rows[:, None] * s_g + rc[None, :], grad.to(out), mask=mask)


def gce_forward(logits: torch.Tensor, targets: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(GCE, dGCE/dlogits).

    `logits` and `targets` (B x C, C <= MAX_CLASSES) float32 or float64 on one device, any strides; the
    kernel computes in float64 whatever the two dtypes.
    """
    args = Args("gce_forward")
    args.tensor("logits", logits, "B C")
    args.tensor("targets", targets, "B C")
    b, c = logits.shape
    if c > MAX_CLASSES:
        raise args.fail(f"logits has C = {c} classes, more than the {MAX_CLASSES} a program holds in registers; "
                        f"use the reference GCE (backend='torch')")
    logits, targets = logits.contiguous(), targets.contiguous()
    block_c = triton.next_power_of_2(c)
    block_b = max(1, min(64, 4096 // block_c))
    loss = torch.empty(b, device=logits.device, dtype=logits.dtype)
    grad = torch.empty_like(logits)
    _gce_kernel[(triton.cdiv(b, block_b),)](
        logits, targets, loss, grad, b, c, logits.stride(0), targets.stride(0), grad.stride(0),
        float(q), 1.0 / b, Q_ZERO=q == 0, WIDE=wide(logits, targets), BLOCK_B=block_b, BLOCK_C=block_c,
        num_warps=min(16, max(4, block_c // 1024)))   # float64 rows: 4 warps spill 2.8 KB at C = 16,384
    return loss.mean(), grad


class GCE(torch.autograd.Function):
    """GCE(logits, targets, q); targets are constants."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
        loss, grad = gce_forward(logits, targets, q)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None


def _custom_op() -> Callable | None:
    """GCE as the custom op ``drcl_fast::gce_forward`` (``custom_op.py``); None where torch has none."""
    if not custom_op.AVAILABLE:
        return None

    @torch.library.custom_op("drcl_fast::gce_forward", mutates_args=())
    def forward(logits: Tensor, targets: Tensor, q: float) -> tuple[Tensor, Tensor]:
        return gce_forward(logits, targets, q)

    @forward.register_fake
    def _(logits, targets, q):
        return logits.new_empty(()), torch.empty_like(logits)

    def setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    def backward(ctx, g, _g_grad):
        return ctx.saved_tensors[0] * g, None, None

    forward.register_autograd(backward, setup_context=setup)
    return lambda logits, targets, q: forward(logits, targets, float(q))[0]


# What dispatch hands out: the Function eagerly, the custom op while torch.compile traces.
entry = custom_op.eager_or_compiled(GCE.apply, _custom_op())


def _probe(device: torch.device):
    """The self-check: `entry` against the float64 reference, the loss and its gradient."""
    from drcl_fast.ops import reference   # on use: drcl_fast.ops imports this module
    g = torch.Generator().manual_seed(101)
    logits, targets = probe_inputs.dyadic(g, 5, 3) * 4, probe_inputs.soft_targets(g, 5, 3)
    fast, ref = {}, {}
    for q in (0.0, 0.5):   # q = 0 (the first epoch's -log) compiles apart
        for out, impl, double in ((fast, entry, False), (ref, reference.gce_loss, True)):
            (x,) = probe_inputs.leaves(device, logits, double=double)
            loss = impl(x, (targets.double() if double else targets).to(device), q)
            out[f"loss at q={q}"], out[f"gradient at q={q}"] = loss, torch.autograd.grad(loss, x)[0]
    return fast, ref, 1e-4


selfcheck.register("gce_loss", _probe)
