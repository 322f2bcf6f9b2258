"""DRCL ops with backend dispatch (the names of ``backends.BACKENDS``).

- "torch": the reference (``reference.py``), the specification in code;
- "triton": fused Triton kernels (``drcl_fast.kernels``) on CUDA tensors;
- "restructured": the loss by C-space algebra in PyTorch (``restructured.py``), the
  CPU's fast path.

An op with no implementation of the name asked for ("cpp" for every op here,
"restructured" for all but the loss) runs what "auto" picks. "auto" takes the
first available of ``backends.AUTO_PREFERENCE`` for the tensors'
device, but the reference loss where the restructured one does not pay off
(``restructured.pays_off``: small batches, many classes). The
fused paths treat targets, L = W+ and the prior as constants (as RSC does); if one
of them requires a gradient, the reference runs instead. Under
``torch.use_deterministic_algorithms(True)`` "triton" gives way to the next fastest:
its atomic adds and autotuned blocks are not bitwise reproducible. Before a Triton
op first runs on a device, its probe (``probes.py``, run by ``drcl_fast.runtime.selfcheck``) compares it with
the reference on a tiny input; a kernel that fails is passed over (``backends.choose``).
"""
from __future__ import annotations

from typing import Callable

import torch

from drcl_fast.kernels.fused_loss import combine
from drcl_fast.ops import custom_ops, probes, reference, restructured
from drcl_fast.ops.pinv import prior_pinv
from drcl_fast.ops.reference import feature_mixup, gce_q, mix_rows
from drcl_fast.runtime.backends import choose, pick, picks_automatically, say_once

try:
    from drcl_fast.kernels import drcl_loss as _triton_loss
    from drcl_fast.kernels.gce import GCE as _TritonGCE
    from drcl_fast.kernels.linear_relu import linear_relu as _triton_linear_relu
    from drcl_fast.kernels.mixup_project import MixupProject as _TritonMixupProject
except ImportError:   # no Triton: "auto" falls back, and says so once
    _triton_loss = _TritonGCE = _triton_linear_relu = _TritonMixupProject = None

__all__ = ["gce_loss", "drcl_loss", "drcl_loss_terms", "drcl_loss_gradients", "loss_forms_gradients", "linear_relu",
           "mixup_project", "prior_pinv", "feature_mixup", "mix_rows", "gce_q", "check_backend",
           "step_ops_run_reference"]

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _eager_or_compiled(eager: Callable | None, compiled: Callable | None) -> Callable | None:
    """`eager` (an autograd Function's entry) normally; its custom op while torch.compile traces."""
    if eager is None or compiled is None:
        return eager
    return lambda *args: (compiled if _is_compiling() else eager)(*args)


def _loss_op(engine: str) -> Callable | None:
    op = custom_ops.ops.get("drcl_loss_terms")
    return None if op is None else (lambda *args: op(*args, engine))


_GCE = {"torch": reference.gce_loss,
        "triton": _eager_or_compiled(_TritonGCE and _TritonGCE.apply, custom_ops.ops.get("gce_loss"))}
_DRCL_TERMS = {"torch": reference.drcl_loss_terms,
               "restructured": _eager_or_compiled(restructured.drcl_loss_terms, _loss_op("restructured")),
               "triton": _eager_or_compiled(_triton_loss and _triton_loss.drcl_loss_terms, _loss_op("triton"))}
_LINEAR_RELU = {"torch": reference.linear_relu,
                "triton": _eager_or_compiled(_triton_linear_relu, custom_ops.ops.get("linear_relu"))}
_MIXUP_PROJECT = {"torch": reference.mixup_project,
                  "triton": _eager_or_compiled(_TritonMixupProject and _TritonMixupProject.apply,
                                               custom_ops.ops.get("mixup_project"))}
_REGISTRIES = {"gce_loss": _GCE, "drcl_loss": _DRCL_TERMS, "linear_relu": _LINEAR_RELU,
               "mixup_project": _MIXUP_PROJECT}


def check_backend(backend: str, device: torch.device | str) -> None:
    """Raise BackendError now, not mid-training, if an op cannot run `backend` on `device`.

    Runs the self-check of every Triton op `backend` would use there, so a failing
    kernel is known (refused, or passed over with a warning) before training starts.
    """
    for op, impls in _REGISTRIES.items():
        choose(op, backend, device, impls)


def _pick(op: str, backend: str, device: torch.device, *constants: torch.Tensor) -> Callable:
    impls = _REGISTRIES[op]
    if any(t.requires_grad for t in constants):
        return impls["torch"]
    if pick(op, backend, device, impls) == "triton" and torch.are_deterministic_algorithms_enabled():
        say_once((op, "deterministic"), f"{op}: deterministic algorithms are on, and the Triton kernels add "
                                        f"with atomics and autotune their blocks; using the next fastest")
        return choose(op, "auto", device, impls, exclude={"triton"})
    return choose(op, backend, device, impls)


probes.register(_REGISTRIES)


def step_ops_run_reference(backend: str, device: torch.device | str) -> bool:
    """Whether a training step's ops besides the RSC loss (the encoder's layers, Mixup and projection,
    GCE) run their PyTorch reference for `backend` on `device`, whichever backend was asked for (on the
    CPU, every one but "triton")."""
    return all(pick(op, backend, device, _REGISTRIES[op]) == "torch"
               for op in ("linear_relu", "mixup_project", "gce_loss"))


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float, backend: str = "auto") -> torch.Tensor:
    """Generalised cross-entropy of `logits` against soft `targets` (q = 0: its -log limit)."""
    return _pick("gce_loss", backend, logits.device, targets)(logits, targets, q)


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float, backend: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE) of the RSC objective on an already-mixed batch."""
    _check_loss_shapes(features, targets, logits, pinv)
    rows, width = features.shape
    return _loss_implementation(rows, width, targets, pinv, backend)(features, targets, logits, pinv, q)


def loss_forms_gradients(rows: int, width: int, targets: torch.Tensor, pinv: torch.Tensor, backend: str) -> bool:
    """Whether the RSC loss `backend` picks for `rows` x `width` features (and these targets, on their
    device) forms its gradients in the forward pass (the restructured engine), so that
    ``drcl_loss_gradients`` can hand them out without autograd."""
    return _loss_implementation(rows, width, targets, pinv, backend) is _DRCL_TERMS["restructured"]


def drcl_loss_gradients(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor,
                        q: float, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The restructured loss with no autograd graph: ((J_L, J_D, J_MSE) stacked, d(weights . J)/dfeatures,
    d(weights . J)/dlogits), `weights` the terms' factors in the objective, (eta, alpha, beta). The same
    values as ``drcl_loss_terms`` under autograd, where ``loss_forms_gradients`` holds."""
    _check_loss_shapes(features, targets, logits, pinv)
    terms, *grads = restructured.ENGINE.forward(features, targets, logits, pinv, q, need_grad=True)
    return (terms, *combine(weights.to(terms), *grads))


def _loss_implementation(rows: int, width: int, targets: torch.Tensor, pinv: torch.Tensor, backend: str
                         ) -> Callable:
    fn = _pick("drcl_loss", backend, targets.device, targets, pinv)
    if picks_automatically(backend, _DRCL_TERMS) and fn is _DRCL_TERMS["restructured"] and \
            not restructured.pays_off(rows, width, targets.shape[1]):
        return _DRCL_TERMS["torch"]
    return fn


def _check_loss_shapes(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                       pinv: torch.Tensor) -> None:
    shapes = {"features": features.shape, "targets": targets.shape, "logits": logits.shape, "pinv": pinv.shape}
    if any(len(shape) != 2 for shape in shapes.values()):
        raise ValueError(f"the RSC loss takes 2-D tensors; got shapes {shapes}")
    (b, d), c = features.shape, targets.shape[1]
    if targets.shape[0] != b or logits.shape != (b, c) or pinv.shape != (c, d):
        raise ValueError(f"the RSC loss needs features (B, D), targets (B, C), logits (B, C) and pinv (C, D); "
                         f"got {', '.join(f'{name} {tuple(shape)}' for name, shape in shapes.items())}")


def drcl_loss(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
              pinv: torch.Tensor, q: float, alpha: float, beta: float, eta: float,
              backend: str = "auto") -> torch.Tensor:
    """The RSC objective J = eta J_L + alpha J_D + beta J_MSE as a scalar tensor.

    `features` is the mixed batch f~ (B x D), `targets` the mixed labels y~ (B x C),
    `logits` f~W (B x C) and `pinv` L = W+ (C x D).
    """
    j_l, j_d, j_mse = drcl_loss_terms(features, targets, logits, pinv, q, backend)
    return eta * j_l + alpha * j_d + beta * j_mse


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """relu(x W^T + b), one hidden layer of the encoder."""
    return _pick("linear_relu", backend, x.device)(x, weight, bias)


def mixup_project(hidden: torch.Tensor, head_weight: torch.Tensor, permutation: torch.Tensor, gamma: float,
                  prior: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(f~, f~ W): the encoder's last layer, unit rows, Mixup with `permutation`, projection by the prior."""
    return _pick("mixup_project", backend, hidden.device, prior)(hidden, head_weight, permutation, gamma, prior)
