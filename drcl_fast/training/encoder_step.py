"""A training step through the encoder's layers in closed form: the CPU's fast twin of autograd.

Autograd records a graph of about twenty nodes for the encoder's three layers every
step, allocates each intermediate afresh and walks the graph back; on a CPU at the
demo's batch that bookkeeping is a noticeable part of a step (docs/training.md). Here
the layers' forward runs the ops ``Encoder.forward`` runs (the same bits) and their
backward is written out, five products and three elementwise passes, into buffers kept
from step to step. What follows the unit rows is the caller's tail: under autograd on
a graph of a few nodes (``loss_and_grads``: any loss implementation), or with its
gradient by hand (``loss_and_grads_by_hand``: SPL's GCE, and RSC's Mixup, projection
and restructured loss, which forms its gradients in its forward anyway). Autograd
through the ``Encoder`` module is the reference twin; ``tests/training/test_encoder_step.py``
compares the two.

It runs where the step's other ops would run their PyTorch reference anyway (the CPU,
any backend but the explicit "torch"); a GPU keeps autograd, whose layers are fused
Triton kernels there. Where the C++ extension ``drcl_fast.training._step_cpp`` is built
(csrc/train_step.cpp), ``native_rsc`` and ``native_spl`` run the whole by-hand step in
one call with the GIL released: the same ops and bits as the Python step, without the
Python between the ops, which units training at once in threads otherwise queue on.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

from drcl_fast import ops
from drcl_fast.model import Encoder
from drcl_fast.ops import recast, reference, restructured
from drcl_fast.ops.pinv import pinv_core
from drcl_fast.runtime.backends import say_once

try:
    from drcl_fast.training import _step_cpp
except ImportError:   # not built (csrc/README.md): the Python step runs, the same bits more slowly
    _step_cpp = None

NATIVE_AVAILABLE = _step_cpp is not None
# The loss's limits as csrc/train_step.cpp takes them, from their one definition in Python.
_LOSS_INTS = [restructured.PANEL_ROWS, restructured.MIN_SPLIT_ROWS, restructured.SUM_CHUNK,
              restructured.SPARSE_LABELS_ABOVE, restructured.LOGITS_ROUTE_MIN_CLASSES, recast.DENSE_ABOVE]
_LOSS_DOUBLES = [restructured.LOGITS_ROUTE_MAX_CONDITION, reference.COS_EPS]

Aux = TypeVar("Aux")
Tail = Callable[[torch.Tensor], tuple[torch.Tensor, Aux]]
TailByHand = Callable[[torch.Tensor], tuple[torch.Tensor, Aux, torch.Tensor]]


def closed_form_applies(backend: str, device: torch.device) -> bool:
    """Whether training steps take the closed-form layers: on the CPU, where the step's ops resolve
    to their PyTorch reference, unless the reference itself (backend "torch") is asked for."""
    return device.type == "cpu" and backend != "torch" and ops.step_ops_run_reference(backend, device)


def step_for(encoder: Encoder, backend: str, device: torch.device) -> "EncoderStep | None":
    """The closed-form step for `encoder` where it applies; None where the step goes through autograd."""
    if not closed_form_applies(backend, device):
        return None
    if not NATIVE_AVAILABLE:
        say_once(("training step", "cpu"), "drcl_fast.training._step_cpp is not built: CPU training steps run in Python "
                                           "(the same results, more slowly); pip install --no-build-isolation -e . "
                                           "builds it (csrc/README.md)")
    return EncoderStep(encoder)


class EncoderStep:
    """One training step's gradients for `encoder`, its layers' backward by hand.

    The activations, their gradients and the weights' gradients live in buffers kept from
    step to step (a step's shapes repeat: the last partial batch is dropped), so no step
    faults in fresh pages for them.
    """

    def __init__(self, encoder: Encoder) -> None:
        first, second, head = encoder.body[0], encoder.body[2], encoder.head
        self._layers = (first.weight, first.bias, second.weight, second.bias, head.weight)
        self._grads = tuple(torch.empty_like(p) for p in self._layers)
        # A bf16 run's products take the layers as bf16 copies, refreshed from the float32 master
        # weights at every step (what autocast casts at every op, cast once per step here).
        self._low = encoder.compute_dtype not in (None, first.weight.dtype)
        self._dtype = encoder.compute_dtype if self._low else first.weight.dtype
        self._operands = tuple(p.detach().to(self._dtype) for p in self._layers) if self._low else self._layers
        self._rows = -1

    def loss_and_grads(self, x: torch.Tensor, tail: Tail) -> tuple[torch.Tensor, Aux]:
        """(loss, aux) of ``tail(encoder(x))``, with the loss's gradients in every parameter's .grad.

        `tail` maps the unit rows F(x) to (a scalar loss, anything else) under autograd;
        parameters it uses itself get their gradients from autograd, as on the reference path.
        """
        def through_autograd(unit: torch.Tensor) -> tuple[torch.Tensor, Aux, torch.Tensor]:
            unit.requires_grad_()
            with torch.enable_grad():
                loss, aux = tail(unit)
                loss.backward()
            return loss, aux, unit.grad

        return self.loss_and_grads_by_hand(x, through_autograd)

    def loss_and_grads_by_hand(self, x: torch.Tensor, tail: TailByHand) -> tuple[torch.Tensor, Aux]:
        """As ``loss_and_grads``, for a `tail` that forms its own gradients: it maps the unit rows to
        (loss, aux, dloss/dF(x)), with no autograd, and fills in the gradients of parameters of its own."""
        self._buffers_for(x.shape[0])
        with torch.no_grad():
            self._refresh_operands()
            x = x.to(self._dtype)
            norms, z, unit = self._forward(x)
            loss, aux, d_unit = tail(unit)
            self._backward(x, norms, z, unit.detach(), d_unit)
        return loss, aux

    def native_rsc(self, x: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor, prior: torch.Tensor,
                   pinv: torch.Tensor, q: float, gamma: float, weights: tuple[float, float, float]
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
        """RSC's step with the restructured loss in C++: (J, its terms), the encoder's .grad set, or None
        where the extension is missing or the loss takes another route (then the Python step runs)."""
        if not self._native_ready(x):
            return None
        core = pinv_core(pinv)
        found = _step_cpp.rsc_step(x, targets, permutation, gamma, prior, pinv, core.gram, core.condition, q,
                                   *weights, list(self._layers), list(self._operands),
                                   self._buffers, list(self._grads), _LOSS_INTS, _LOSS_DOUBLES)
        if not found:
            return None
        self._set_grads()
        return found[0], tuple(found[1].unbind())

    def native_spl(self, x: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, q: float
                   ) -> torch.Tensor | None:
        """SPL's step (GCE, the prior trained) in C++: the loss, the encoder's and the prior's .grad set,
        or None where the extension is missing."""
        if not self._native_ready(x) or prior.grad is not None:
            return None
        prior_grad = torch.empty_like(prior)
        loss, = _step_cpp.spl_step(x, targets, prior.detach(), q, list(self._layers), list(self._operands),
                                   self._buffers, list(self._grads), prior_grad)
        self._set_grads()
        prior.grad = prior_grad
        return loss

    def _native_ready(self, x: torch.Tensor) -> bool:
        """The extension is there, and no gradient waits to be added to (it writes them, it does not add);
        then the buffers are there for x's rows."""
        if _step_cpp is None or any(p.grad is not None for p in self._layers):
            return False
        self._buffers_for(x.shape[0])
        return True

    def _set_grads(self) -> None:
        for param, grad in zip(self._layers, self._grads):
            param.grad = grad

    def _buffers_for(self, rows: int) -> None:
        """The activation buffers for batches of `rows` rows (new ones when the batch size changes), in
        the products' dtype."""
        if rows == self._rows:
            return
        w1, _, _, _, w3 = self._operands
        hidden, output = w1.shape[0], w3.shape[0]
        self._h1, self._h2, self._d_h = (w1.new_empty(rows, hidden) for _ in range(3))
        self._z = w1.new_empty(rows, output)
        self._buffers = [self._h1, self._h2, self._d_h, self._z]
        self._rows = rows

    def _refresh_operands(self) -> None:
        """The bf16 copies of the layers as the master weights are now (the optimiser moved them)."""
        if self._low:
            for operand, layer in zip(self._operands, self._layers):
                operand.copy_(layer)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ops of ``Encoder.forward`` (F.linear is addmm or mm on the CPU): (|z|, z, the unit rows
        z / |z|), z in the master weights' dtype."""
        w1, b1, w2, b2, w3 = self._operands
        torch.addmm(b1, x, w1.t(), out=self._h1).relu_()
        torch.addmm(b2, self._h1, w2.t(), out=self._h2).relu_()
        z = torch.mm(self._h2, w3.t(), out=self._z).to(self._layers[0].dtype)
        norms = z.norm(dim=1, keepdim=True)
        return norms, z, z / norms

    def _backward(self, x: torch.Tensor, norms: torch.Tensor, z: torch.Tensor, unit: torch.Tensor,
                  d_unit: torch.Tensor) -> None:
        """Gradients of the layers from dJ/dF(x), accumulated into .grad as autograd would (in a bf16
        run: each product's bf16 result cast to the master weights' dtype, as autocast's backward)."""
        w1, _, w2, _, w3 = self._operands
        g1, gb1, g2, gb2, g3 = self._grads
        h1, h2, d_h = self._h1, self._h2, self._d_h
        # Through z / |z|: (g - u (u . g)) / |z|, u the unit rows; z's memory takes it (not read again).
        row_dots = torch.bmm(unit.unsqueeze(1), d_unit.unsqueeze(2)).view(-1, 1)
        d_z = torch.addcmul(d_unit, unit, row_dots, value=-1.0, out=z).div_(norms).to(self._dtype)
        torch.mm(d_z, w3, out=d_h)
        self._accumulate(4, g3, torch.mm, d_z.t(), h2)
        d_a = torch.ops.aten.threshold_backward.grad_input(d_h, h2, 0, grad_input=h2)   # h2 not read again
        torch.mm(d_a, w2, out=d_h)
        self._accumulate(2, g2, torch.mm, d_a.t(), h1)
        self._accumulate(3, gb2, torch.sum, d_a, 0)
        d_a = torch.ops.aten.threshold_backward.grad_input(d_h, h1, 0, grad_input=h1)
        self._accumulate(0, g1, torch.mm, d_a.t(), x)
        self._accumulate(1, gb1, torch.sum, d_a, 0)

    def _accumulate(self, layer: int, buffer: torch.Tensor, op: Callable[..., torch.Tensor], *args: Any) -> None:
        """layer's .grad += op(*args), as autograd accumulates: where it has no gradient
        (zero_grad(set_to_none=True)) the buffer becomes it, read by the optimiser before the next
        step writes it again; where it has one, the sum goes into it. In a bf16 run op's result is
        bf16, cast into the buffer."""
        param = self._layers[layer]
        if self._low:
            def grad(out: torch.Tensor | None = None) -> torch.Tensor:
                return op(*args).to(buffer.dtype) if out is None else out.copy_(op(*args))
        else:
            def grad(out: torch.Tensor | None = None) -> torch.Tensor:
                return op(*args, out=out)
        if param.grad is None:
            param.grad = grad(out=buffer)
        elif param.grad is buffer:   # last step's buffer, zeroed in place or not: add a fresh product
            param.grad.add_(grad())
        else:
            param.grad.add_(grad(out=buffer))
