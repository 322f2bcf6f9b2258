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
op first runs on a device, its probe (beside its kernels, run by ``drcl_fast.runtime.selfcheck``) compares it
with the reference on a tiny input; a kernel that fails is passed over (``backends.choose``).
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch

from drcl_fast.ops import reference, restructured
from drcl_fast.ops.pinv import prior_pinv
from drcl_fast.ops.reference import feature_mixup, gce_q, mix_rows
from drcl_fast.runtime.backends import choose, pick, picks_automatically, say_once

# The ops users call. The trainer's helpers (check_backend, step_ops_run_reference, drcl_loss_implementation,
# forms_gradients, and reference's mix_rows and gce_q) stay here, where the training modules look them up
# as ops.<name>, but are not the user API.
__all__ = ["gce_loss", "drcl_loss", "drcl_loss_terms", "linear_relu", "mixup_project", "prior_pinv", "feature_mixup"]

try:   # importing a kernel module also registers its self-check probe (drcl_fast.runtime.selfcheck)
    from drcl_fast.kernels import drcl_loss as _triton_loss
    from drcl_fast.kernels import gce as _triton_gce
    from drcl_fast.kernels import linear_relu as _triton_linear_relu
    from drcl_fast.kernels import mixup_project as _triton_mixup_project
except ImportError as missing:   # no Triton: "auto" falls back, and says so once
    if not (missing.name or "").startswith("triton"):
        raise
    _triton_loss = _triton_gce = _triton_linear_relu = _triton_mixup_project = None


def _triton_entry(module: ModuleType | None) -> Callable | None:
    """What the kernel module hands out (its Function, or its custom op while torch.compile traces).

    Looked up at each call: the kernels import this package (the references, the loss's shared half),
    so where a program imports a kernel module first, that module is still loading here.
    """
    return None if module is None else (lambda *args: module.entry(*args))


# Each op's implementations by backend name.
_REGISTRIES: dict[str, dict[str, Callable | None]] = {
    "gce_loss": {"torch": reference.gce_loss, "triton": _triton_entry(_triton_gce)},
    "drcl_loss": {"torch": reference.drcl_loss_terms, "restructured": restructured.entry,
                  "triton": _triton_entry(_triton_loss)},
    "linear_relu": {"torch": reference.linear_relu, "triton": _triton_entry(_triton_linear_relu)},
    "mixup_project": {"torch": reference.mixup_project, "triton": _triton_entry(_triton_mixup_project)},
}


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


def step_ops_run_reference(backend: str, device: torch.device | str) -> bool:
    """Whether a training step's ops besides the RSC loss (the encoder's layers, Mixup and projection,
    GCE) run their PyTorch reference for `backend` on `device`, whichever backend was asked for (on the
    CPU, every one but "triton")."""
    return all(pick(op, backend, device, _REGISTRIES[op]) == "torch"
               for op in ("linear_relu", "mixup_project", "gce_loss"))


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float, backend: str = "auto") -> torch.Tensor:
    """Generalised cross-entropy of `logits` against soft `targets`, the mean over rows of ``(1 - s^q) / q``.

    ``s_i = sum_c targets_ic softmax(logits_i)_c``; at q = 0 the loss is its limit, ``-log s``
    (docs/design.md section 1).

    Args:
        logits: (B, C) class scores.
        targets: (B, C) soft targets (one-hot or Mixup-mixed labels), treated as constants.
        q: the exponent, in [0, 1]; training ramps it as ``min(1, 0.01 e)`` with the epoch e.
        backend: "auto", "torch" (the reference) or "triton" (CUDA tensors); any other name
            runs what "auto" picks.

    Returns:
        The loss, a 0-dim tensor, differentiable with respect to `logits`.

    Raises:
        BackendError: an unknown backend, or "triton" where it cannot run (no Triton, CPU
            tensors, a failed self-check).

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        >>> targets = torch.eye(3)[[0, 1, 2, 0]]
        >>> round(float(ops.gce_loss(logits, targets, q=0.5)), 4)
        0.9197
        >>> round(float(ops.gce_loss(logits, targets, q=0.0)), 4)   # cross-entropy
        1.3928
    """
    return _pick("gce_loss", backend, logits.device, targets)(logits, targets, q)


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float, backend: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE), the three terms of the RSC objective, on an already-mixed batch.

    With the labels recast into the embedding space, ``r = targets @ pinv``: J_L is the GCE of
    `logits` against `targets`, J_D the two B x B cosine-consistency terms between `r` and
    `features`, J_MSE the mean squared error between them (docs/design.md section 1).

    Args:
        features: (B, D) the mixed embeddings f~.
        targets: (B, C) the mixed labels y~, treated as constants.
        logits: (B, C) the class scores f~ W.
        pinv: (C, D) L = W+, the prior's pseudo-inverse (`prior_pinv`), treated as a constant.
        q: the GCE exponent, in [0, 1].
        backend: "auto", "torch" (the reference), "restructured" (the loss by C-space algebra)
            or "triton" (CUDA tensors); "cpp" runs what "auto" picks.

    Returns:
        (J_L, J_D, J_MSE), each a 0-dim tensor, differentiable with respect to `features` and `logits`.

    Raises:
        ValueError: the inputs are not 2-D or their shapes do not fit together.
        BackendError: an unknown backend, or one that cannot run here.

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> prior = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))   # W, D x C
        >>> pinv = ops.prior_pinv(prior)
        >>> targets = torch.eye(3)[[0, 1, 2, 0]]
        >>> features = targets @ pinv   # rows that are their labels recast: J_D = J_MSE = 0
        >>> j_l, j_d, j_mse = ops.drcl_loss_terms(features, targets, features @ prior, pinv, q=0.5)
        >>> round(float(j_l), 4), round(float(j_d), 6), round(float(j_mse), 6)
        (0.482, 0.0, 0.0)
    """
    restructured.check_shapes(features, targets, logits, pinv)
    rows, width = features.shape
    return drcl_loss_implementation(rows, width, targets, pinv, backend)(features, targets, logits, pinv, q)


def drcl_loss_implementation(rows: int, width: int, targets: torch.Tensor, pinv: torch.Tensor, backend: str
                             ) -> Callable:
    """What ``drcl_loss_terms`` runs for `rows` x `width` features with these targets and L: a training
    unit chooses it once, for all its batches (the same for each: their shape repeats)."""
    fn = _pick("drcl_loss", backend, targets.device, targets, pinv)
    impls = _REGISTRIES["drcl_loss"]
    if picks_automatically(backend, impls) and fn is impls["restructured"] and \
            not restructured.pays_off(rows, width, targets.shape[1]):
        return impls["torch"]
    return fn


def forms_gradients(implementation: Callable) -> bool:
    """Whether a loss `implementation` (from ``drcl_loss_implementation``) is the restructured engine, which
    forms its gradients in the forward pass: then ``restructured.drcl_loss_gradients`` hands them out
    without autograd."""
    return implementation is _REGISTRIES["drcl_loss"]["restructured"]


def drcl_loss(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
              pinv: torch.Tensor, q: float, alpha: float, beta: float, eta: float,
              backend: str = "auto") -> torch.Tensor:
    """The RSC objective J = eta J_L + alpha J_D + beta J_MSE (terms: `drcl_loss_terms`).

    Args:
        features: (B, D) the mixed embeddings f~ (`feature_mixup` of unit rows).
        targets: (B, C) the mixed labels y~.
        logits: (B, C) the class scores f~ W.
        pinv: (C, D) L = W+ (`prior_pinv`).
        q: the GCE exponent, in [0, 1].
        alpha, beta, eta: the weights of J_D, J_MSE and J_L (released defaults 0.1, 0.1, 1).
        backend: as for `drcl_loss_terms`.

    Returns:
        J, a 0-dim tensor, differentiable with respect to `features` and `logits`.

    Raises:
        ValueError, BackendError: as for `drcl_loss_terms`.

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> g = torch.Generator().manual_seed(0)
        >>> prior = torch.randn(8, 3, generator=g)                  # W, D x C
        >>> unit = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
        >>> labels = torch.eye(3)[[0, 1, 2, 0]]
        >>> features, targets = ops.feature_mixup(unit, labels, 0.9, torch.tensor([1, 2, 3, 0]))
        >>> loss = ops.drcl_loss(features, targets, features @ prior, ops.prior_pinv(prior),
        ...                      q=0.5, alpha=0.1, beta=0.1, eta=1.0)
        >>> round(float(loss), 4)
        0.5542
    """
    j_l, j_d, j_mse = drcl_loss_terms(features, targets, logits, pinv, q, backend)
    return eta * j_l + alpha * j_d + beta * j_mse


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """relu(x weight^T + bias), one hidden layer of the encoder.

    Args:
        x: (B, in) rows.
        weight: (out, in), as `torch.nn.Linear` holds it.
        bias: (out,).
        backend: "auto", "torch" (the reference) or "triton" (CUDA tensors: one GEMM with a
            bias and ReLU epilogue); any other name runs what "auto" picks.

    Returns:
        (B, out) activations, differentiable with respect to every input.

    Raises:
        BackendError: an unknown backend, or "triton" where it cannot run.

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> g = torch.Generator().manual_seed(0)
        >>> x, weight = torch.randn(4, 5, generator=g), torch.randn(6, 5, generator=g)
        >>> hidden = ops.linear_relu(x, weight, torch.zeros(6))
        >>> hidden.shape, bool((hidden >= 0).all())
        (torch.Size([4, 6]), True)
    """
    return _pick("linear_relu", backend, x.device)(x, weight, bias)


def mixup_project(hidden: torch.Tensor, head_weight: torch.Tensor, permutation: torch.Tensor, gamma: float,
                  prior: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(f~, f~ W): the encoder's last layer, unit rows, Mixup with `permutation`, projection by the prior.

    f = the rows of ``hidden @ head_weight^T`` scaled to unit norm, ``f~ = gamma f + (1 - gamma) f[permutation]``.

    Args:
        hidden: (B, H) the last hidden layer's activations.
        head_weight: (D, H) the last linear layer's weight (no bias).
        permutation: (B,) int64, the row each row is mixed with.
        gamma: the Mixup coefficient (1: no mixing).
        prior: (D, C) the prior W, treated as a constant.
        backend: "auto", "torch" (the reference) or "triton" (CUDA tensors: one fused stage);
            any other name runs what "auto" picks.

    Returns:
        (f~ (B, D), f~ W (B, C)), in the prior's dtype.

    Raises:
        BackendError: as for `linear_relu`.

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> g = torch.Generator().manual_seed(0)
        >>> hidden, head = torch.rand(4, 6, generator=g), torch.randn(8, 6, generator=g)
        >>> prior = torch.randn(8, 3, generator=g)
        >>> mixed, logits = ops.mixup_project(hidden, head, torch.tensor([1, 2, 3, 0]), 0.9, prior)
        >>> mixed.shape, logits.shape
        (torch.Size([4, 8]), torch.Size([4, 3]))
    """
    return _pick("mixup_project", backend, hidden.device, prior)(hidden, head_weight, permutation, gamma, prior)
