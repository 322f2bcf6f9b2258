"""DRCL ops with backend dispatch (`backend="auto" | "torch" | "triton" | "cpp"`).

Only the PyTorch reference is registered so far; fused kernels register here
as they land, under the same signatures.
"""
from __future__ import annotations

import torch

from drcl_fast.backends import choose
from drcl_fast.ops import reference
from drcl_fast.ops.reference import feature_mixup, gce_q, prior_pinv

_GCE = {"torch": reference.gce_loss}
_DRCL_TERMS = {"torch": reference.drcl_loss_terms}

__all__ = ["gce_loss", "drcl_loss", "drcl_loss_terms", "prior_pinv", "feature_mixup", "gce_q", "check_backend"]


def check_backend(backend: str, device: torch.device | str) -> None:
    """Raise BackendError now, not mid-training, if an op cannot run `backend` on `device`."""
    choose("gce_loss", backend, device, _GCE)
    choose("drcl_loss", backend, device, _DRCL_TERMS)


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float, backend: str = "auto") -> torch.Tensor:
    """Generalised cross-entropy of `logits` against soft `targets` (q = 0: its -log limit)."""
    return choose("gce_loss", backend, logits.device, _GCE)(logits, targets, q)


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float, backend: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE) of the RSC objective on an already-mixed batch."""
    fn = choose("drcl_loss", backend, features.device, _DRCL_TERMS)
    return fn(features, targets, logits, pinv, q)


def drcl_loss(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
              pinv: torch.Tensor, q: float, alpha: float, beta: float, eta: float,
              backend: str = "auto") -> torch.Tensor:
    """The RSC objective J = eta J_L + alpha J_D + beta J_MSE as a scalar tensor.

    `features` is the mixed batch f~ (B x D), `targets` the mixed labels y~ (B x C),
    `logits` f~W (B x C) and `pinv` L = W+ (C x D).
    """
    j_l, j_d, j_mse = drcl_loss_terms(features, targets, logits, pinv, q, backend)
    return eta * j_l + alpha * j_d + beta * j_mse
