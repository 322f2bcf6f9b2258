"""The fused Functions as ``torch.library`` custom ops, so ``torch.compile`` can capture a training step.

Each fused op is registered as a pair: a forward op that returns the outputs and
what the backward needs (the gradients the forward already formed, or the saved
activations), and a backward op, with ``register_autograd`` joining them and
``register_fake`` giving shapes to the compiler. Both call the same plain
forward/backward functions as the eager ``torch.autograd.Function``s, so the two
paths cannot drift. Dispatch uses these while ``torch.compile`` traces and the
Functions otherwise (a custom op's Python dispatch costs more per call).

Needs ``torch.library.custom_op`` (torch >= 2.4); ``AVAILABLE`` says whether it is here.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from drcl_fast.kernels import fused_loss
from drcl_fast.ops import restructured

AVAILABLE = hasattr(torch.library, "custom_op")

# Loss engines by name; the Triton one joins when Triton imports.
ENGINES: dict[str, fused_loss.LossEngine] = {"restructured": restructured.ENGINE}

ops: dict[str, Callable] = {}   # public name -> function calling the registered op


def _register_loss() -> None:
    @torch.library.custom_op("drcl_fast::drcl_loss_forward", mutates_args=())
    def loss_forward(features: Tensor, targets: Tensor, logits: Tensor, pinv: Tensor, q: float,
                     engine: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return ENGINES[engine].forward(features, targets, logits, pinv, q)

    @loss_forward.register_fake
    def _(features, targets, logits, pinv, q, engine):
        return features.new_empty(3), torch.empty_like(features), torch.empty_like(features), \
            torch.empty_like(logits)

    def setup(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:])

    def backward(ctx, g_terms, *_unused):
        grad_features, grad_logits = fused_loss.combine(g_terms, *ctx.saved_tensors)
        return grad_features, None, grad_logits, None, None, None

    loss_forward.register_autograd(backward, setup_context=setup)

    def drcl_loss_terms(features, targets, logits, pinv, q, engine):
        return tuple(loss_forward(features, targets, logits, pinv, float(q), engine)[0].unbind())

    ops["drcl_loss_terms"] = drcl_loss_terms


def _register_triton() -> None:
    from drcl_fast.kernels import drcl_loss, gce, linear_relu, mixup_project

    ENGINES["triton"] = drcl_loss.ENGINE

    @torch.library.custom_op("drcl_fast::gce_forward", mutates_args=())
    def gce_forward(logits: Tensor, targets: Tensor, q: float) -> tuple[Tensor, Tensor]:
        return gce.gce_forward(logits, targets, q)

    @gce_forward.register_fake
    def _(logits, targets, q):
        return logits.new_empty(()), torch.empty_like(logits)

    def gce_setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    def gce_backward(ctx, g, _g_grad):
        return ctx.saved_tensors[0] * g, None, None

    gce_forward.register_autograd(gce_backward, setup_context=gce_setup)
    ops["gce_loss"] = lambda logits, targets, q: gce_forward(logits, targets, float(q))[0]

    @torch.library.custom_op("drcl_fast::linear_relu", mutates_args=())
    def linear_relu_op(x: Tensor, weight: Tensor, bias: Tensor, impl: str) -> Tensor:
        return linear_relu.linear_relu_forward(x, weight, bias, impl)

    @linear_relu_op.register_fake
    def _(x, weight, bias, impl):
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.custom_op("drcl_fast::linear_relu_backward", mutates_args=())
    def linear_relu_bwd(grad: Tensor, x: Tensor, weight: Tensor, out: Tensor, impl: str,
                        need_dx: bool) -> tuple[Tensor, Tensor, Tensor]:
        dx, dw, db = linear_relu.linear_relu_backward(grad, x, weight, out, impl, need_dx)
        return (x.new_empty(0) if dx is None else dx), dw, db

    @linear_relu_bwd.register_fake
    def _(grad, x, weight, out, impl, need_dx):
        return (torch.empty_like(x) if need_dx else x.new_empty(0)), torch.empty_like(weight), \
            weight.new_empty(weight.shape[0])

    def lr_setup(ctx, inputs, output):
        x, weight, _, ctx.impl = inputs
        ctx.save_for_backward(x, weight, output)

    def lr_backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dw, db = linear_relu_bwd(grad, x, weight, out, ctx.impl, need_dx)
        return (dx if need_dx else None), dw, db, None

    linear_relu_op.register_autograd(lr_backward, setup_context=lr_setup)
    ops["linear_relu"] = lambda x, weight, bias: linear_relu_op(x, weight, bias, linear_relu.DEFAULT_IMPL)

    @torch.library.custom_op("drcl_fast::mixup_project", mutates_args=())
    def mix_forward(hidden: Tensor, head_weight: Tensor, permutation: Tensor, gamma: float,
                    prior: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return mixup_project.mixup_project_forward(hidden, head_weight, permutation, gamma, prior)

    @mix_forward.register_fake
    def _(hidden, head_weight, permutation, gamma, prior):
        b, d = hidden.shape[0], head_weight.shape[0]
        return (hidden.new_empty(b, d), hidden.new_empty(b, prior.shape[1]), hidden.new_empty(b, d),
                hidden.new_empty(b))

    @torch.library.custom_op("drcl_fast::mixup_project_backward", mutates_args=())
    def mix_backward(d_mixed: Tensor, d_logits: Tensor, hidden: Tensor, head_weight: Tensor, z: Tensor,
                     sq: Tensor, permutation: Tensor, gamma: float, prior: Tensor, need_dh: bool
                     ) -> tuple[Tensor, Tensor]:
        dh, dw = mixup_project.mixup_project_backward(d_mixed, d_logits, hidden, head_weight, z, sq,
                                                      permutation, gamma, prior, need_dh)
        return (hidden.new_empty(0) if dh is None else dh), dw

    @mix_backward.register_fake
    def _(d_mixed, d_logits, hidden, head_weight, z, sq, permutation, gamma, prior, need_dh):
        return (torch.empty_like(hidden) if need_dh else hidden.new_empty(0)), torch.empty_like(head_weight)

    def mix_setup(ctx, inputs, output):
        hidden, head_weight, permutation, ctx.gamma, prior = inputs
        _, _, z, sq = output
        ctx.mark_non_differentiable(z, sq)
        ctx.save_for_backward(hidden, head_weight, z, sq, permutation, prior)

    def mix_backward_rule(ctx, d_mixed, d_logits, _dz, _dsq):
        hidden, head_weight, z, sq, permutation, prior = ctx.saved_tensors
        d_mixed = torch.zeros_like(z) if d_mixed is None else d_mixed
        d_logits = z.new_zeros(z.shape[0], prior.shape[1]) if d_logits is None else d_logits
        need_dh = ctx.needs_input_grad[0]
        dh, dw = mix_backward(d_mixed, d_logits, hidden, head_weight, z, sq, permutation, ctx.gamma, prior,
                              need_dh)
        return (dh if need_dh else None), dw, None, None, None

    mix_forward.register_autograd(mix_backward_rule, setup_context=mix_setup)
    ops["mixup_project"] = lambda hidden, head_weight, permutation, gamma, prior: \
        mix_forward(hidden, head_weight, permutation, float(gamma), prior)[:2]


if AVAILABLE:
    _register_loss()
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    else:
        _register_triton()
