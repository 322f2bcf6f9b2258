"""The Triton training ops' self-check probes (``drcl_fast.runtime.selfcheck``).

Each runs the registered "triton" implementation and the float64
reference on one tiny input of odd sizes, forward and backward. Entries are multiples of
1/8, so every product of two inputs is exact in TF32 and bfloat16 too: the GEMMs of linear_relu
are exact at every precision; the ops that normalise rows are not, hence the looser tolerances.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from drcl_fast.ops import reference
from drcl_fast.runtime import selfcheck


def register(registries: Mapping[str, Mapping[str, Callable | None]]) -> None:
    """Register a probe of each op's "triton" entry in `registries` (op -> backend name -> implementation)."""
    for op, probe in PROBES.items():
        selfcheck.register(op, lambda device, probe=probe, impls=registries[op]: probe(impls["triton"], device))


def _dyadic(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(-8, 9, shape, generator=generator).float() / 8


def _soft_targets(generator: torch.Generator, rows: int, classes: int) -> torch.Tensor:
    """Mixed one-hot rows, 0.75 / 0.25, as Mixup makes them."""
    labels = torch.randint(0, classes, (rows,), generator=generator)
    one_hot = torch.eye(classes)[labels]
    return 0.75 * one_hot + 0.25 * one_hot[torch.randperm(rows, generator=generator)]


def _matmul_tolerance() -> float:
    from drcl_fast.kernels.precision import get_precision
    return {"fp32": 1e-4, "tf32": 1e-2, "bf16": 6e-2}.get(get_precision(), 6e-2)


def _leaves(device: torch.device, *tensors: torch.Tensor, double: bool = False) -> list[torch.Tensor]:
    return [(t.double() if double else t).to(device).requires_grad_() for t in tensors]


def _probe_gce(triton: Callable, device: torch.device):
    g = torch.Generator().manual_seed(101)
    logits, targets = _dyadic(g, 5, 3) * 4, _soft_targets(g, 5, 3)
    fast, ref = {}, {}
    for q in (0.0, 0.5):   # q = 0 (the first epoch's -log) compiles apart
        for out, impl, double in ((fast, triton, False), (ref, reference.gce_loss, True)):
            (x,) = _leaves(device, logits, double=double)
            loss = impl(x, (targets.double() if double else targets).to(device), q)
            out[f"loss at q={q}"], out[f"gradient at q={q}"] = loss, torch.autograd.grad(loss, x)[0]
    return fast, ref, 1e-4


def _probe_drcl_loss(triton: Callable, device: torch.device):
    g = torch.Generator().manual_seed(102)
    b, d, c = 7, 5, 3
    features, targets, logits, pinv = _dyadic(g, b, d), _soft_targets(g, b, c), _dyadic(g, b, c), _dyadic(g, c, d)
    weights = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    fast, ref = {}, {}
    for out, impl, double in ((fast, triton, False), (ref, reference.drcl_loss_terms, True)):
        dtype = torch.float64 if double else torch.float32
        f, lg = _leaves(device, features, logits, double=double)
        y, p = targets.to(device, dtype), pinv.to(device, dtype)
        terms = impl(f, y, lg, p, 0.5)
        out["J_L"], out["J_D"], out["J_MSE"] = terms
        total = sum(w * t for w, t in zip(weights.tolist(), terms))
        out["gradient of the features"], out["gradient of the logits"] = torch.autograd.grad(total, (f, lg))
        with torch.no_grad():   # validation's forward without gradients compiles apart
            out["J_D without gradients"] = impl(f.detach(), y, lg.detach(), p, 0.5)[1]
    return fast, ref, _matmul_tolerance()


def _probe_linear_relu(triton: Callable, device: torch.device):
    g = torch.Generator().manual_seed(103)
    x, weight, grad = _dyadic(g, 5, 9), _dyadic(g, 7, 9), _dyadic(g, 5, 7)
    bias = _dyadic(g, 7) + 1 / 128   # no pre-activation is exactly 0: the ReLU's mask is unambiguous
    fast, ref = {}, {}
    for out, impl, double in ((fast, triton, False), (ref, reference.linear_relu, True)):
        leaves = _leaves(device, x, weight, bias, double=double)
        y = impl(*leaves)
        upstream = grad.to(device, y.dtype)
        out["output"] = y
        out["dx"], out["dW"], out["db"] = torch.autograd.grad(y, leaves, upstream)
    return fast, ref, 1e-4


def _probe_mixup_project(triton: Callable, device: torch.device):
    g = torch.Generator().manual_seed(104)
    b, h, d, c = 5, 9, 7, 3
    hidden, head, prior = _dyadic(g, b, h), _dyadic(g, d, h), _dyadic(g, d, c)
    d_mixed, d_logits = _dyadic(g, b, d), _dyadic(g, b, c)
    permutation = torch.randperm(b, generator=g).to(device)
    fast, ref = {}, {}
    for out, impl, double in ((fast, triton, False), (ref, reference.mixup_project, True)):
        dtype = torch.float64 if double else torch.float32
        leaves = _leaves(device, hidden, head, double=double)
        mixed, logits = impl(*leaves, permutation, 0.75, prior.to(device, dtype))
        out["mixed features"], out["logits"] = mixed, logits
        out["d hidden"], out["d head weight"] = torch.autograd.grad(
            (mixed, logits), leaves, (d_mixed.to(device, dtype), d_logits.to(device, dtype)))
    return fast, ref, _matmul_tolerance()


PROBES = {"gce_loss": _probe_gce, "drcl_loss": _probe_drcl_loss, "linear_relu": _probe_linear_relu,
          "mixup_project": _probe_mixup_project}
