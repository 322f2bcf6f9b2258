"""The DRCL objective written to read like docs/design.md section 1.

This is the specification in code: every fast implementation of these ops has
the same signature and is tested against the functions here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COS_EPS = 1e-6  # the released code's clamp on the product of norms


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
    """Generalised cross-entropy against soft targets, mean over rows.

    `(1 - s^q) / q` with `s_i = sum_c t_ic softmax(p_i)_c`; at q = 0 its limit
    `-log s` (the released code divides by zero there).
    """
    s = (targets * torch.softmax(logits, dim=1)).sum(dim=1)
    if q == 0:
        return (-torch.log(s)).mean()
    return ((1.0 - s.pow(q)) / q).mean()


def cos2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Twice the pairwise cosine similarity, rows of `a` against rows of `b`."""
    norms = a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True).t()
    return 2.0 * (a @ b.t()) / norms.clamp_min(COS_EPS)


def discrimination_loss(recast: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """J_D: the two B x B consistency terms between recast targets and features."""
    within = (cos2(recast, recast) - cos2(features, features)).pow(2).mean()
    cross = cos2(recast, features)
    return within + (cross - cross.t()).pow(2).mean()


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE) on an already-mixed batch: f~, y~, f~W and L = W+."""
    recast = targets @ pinv
    return (gce_loss(logits, targets, q),
            discrimination_loss(recast, features),
            F.mse_loss(features, recast))


def drcl_loss(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
              pinv: torch.Tensor, q: float, alpha: float, beta: float, eta: float) -> torch.Tensor:
    """J = eta J_L + alpha J_D + beta J_MSE."""
    j_l, j_d, j_mse = drcl_loss_terms(features, targets, logits, pinv, q)
    return eta * j_l + alpha * j_d + beta * j_mse


def prior_pinv(prior: torch.Tensor) -> torch.Tensor:
    """L = W+ (C x D), the Moore-Penrose pseudo-inverse, computed in float64."""
    return torch.linalg.pinv(prior.double()).to(prior.dtype)


def mix_rows(rows: torch.Tensor, gamma: float, permutation: torch.Tensor) -> torch.Tensor:
    """gamma * rows + (1 - gamma) * rows[permutation]."""
    return gamma * rows + (1.0 - gamma) * rows[permutation]


def feature_mixup(features: torch.Tensor, targets: torch.Tensor, gamma: float,
                  permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FA, Mixup in the embedding space: each row mixed with the row `permutation` names, labels alike.

    ``f~ = gamma f + (1 - gamma) f[permutation]`` and ``y~ = gamma y + (1 - gamma) y[permutation]``;
    f~ is not re-normalised (docs/design.md section 1).

    Args:
        features: (B, D) embeddings f (unit rows in training).
        targets: (B, C) labels y (one-hot or 0/1 rows).
        gamma: the Mixup coefficient (1: no mixing, the "without FA" ablation).
        permutation: (B,) int64, the row each row is mixed with.

    Returns:
        (f~ (B, D), y~ (B, C)).

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> features, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.eye(2)
        >>> mixed, mixed_labels = ops.feature_mixup(features, labels, 0.9, torch.tensor([1, 0]))
        >>> mixed
        tensor([[0.9000, 0.1000],
                [0.1000, 0.9000]])
    """
    return mix_rows(features, gamma, permutation), mix_rows(targets, gamma, permutation)


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One hidden layer of the encoder: Linear then ReLU."""
    return torch.relu(F.linear(x, weight, bias))


def mixup_project(hidden: torch.Tensor, head_weight: torch.Tensor, permutation: torch.Tensor, gamma: float,
                  prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's tail and FA: (f~, f~ W) with f the unit rows of the last linear layer (whose
    product, in a bf16 run, takes bf16 operands: its output is normalised in the prior's dtype)."""
    z = F.linear(hidden, head_weight).to(prior.dtype)
    f = z / z.norm(dim=1, keepdim=True)
    mixed = gamma * f + (1.0 - gamma) * f[permutation]
    return mixed, mixed @ prior


def gce_q(epoch: int) -> float:
    """The GCE exponent's ramp, min(1, 0.01 e)."""
    return min(1.0, 0.01 * epoch)
