"""The fused RSC loss's backend-neutral half: C-space pieces and the autograd Function.

Both fast loss engines (Triton tiles in ``drcl_loss.py``, PyTorch row panels in
``drcl_fast.ops.restructured``) compute (J_L, J_D, J_MSE) *and* their gradients
in one forward pass, never holding a B x B matrix, from the same C-space pieces
(docs/design.md, section 4):

- ``P = F~ L^T`` (B x C), so ``r_i . f~_j = y~_i . P_j`` (the cross Gram is B x C x B);
- ``YK = y~ (L L^T)`` (B x C), so ``r_i . r_j = YK_i . y~_j`` and ``|r_i|^2 = YK_i . y~_i``;
- only ``F~ F~^T`` is a B x B x D product.

The Function saves the three gradients and its backward only scales and adds them.
This module needs no Triton: the CPU path runs where Triton is not installed.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch


class CSpace(NamedTuple):
    """The per-batch pieces every pair tile reads."""

    nf: torch.Tensor   # |f~_i| (B)
    nr: torch.Tensor   # |r_i| = |y~_i L| (B), from the C x C core
    p: torch.Tensor    # F~ L^T (B x C)
    yk: torch.Tensor   # y~ L L^T (B x C)


def prepare(features: torch.Tensor, targets: torch.Tensor, pinv: torch.Tensor,
            yk: torch.Tensor | None = None, nf: torch.Tensor | None = None,
            p: torch.Tensor | None = None) -> CSpace:
    """The C-space pieces; `yk` (y~ L L^T in float64), `nf` and `p` where the caller has them.

    YK and |r| go through float64 (C x C and B x C work): in float32 the roundings of K, YK
    and the row sums add up where cos2(r_i, r_j) and cos2(f_i, f_j) nearly cancel, late in
    training (docs/kernels.md).
    """
    if yk is None:
        wide = pinv.double()
        yk = targets.double() @ (wide @ wide.t())
    nr = (yk * targets).sum(dim=1).clamp_min(0.0).sqrt()   # rounding can leave a tiny negative
    return CSpace(features.norm(dim=1) if nf is None else nf, nr.to(features.dtype),
                  features @ pinv.t() if p is None else p, yk.to(features.dtype))


class LossEngine(Protocol):
    """One fast implementation of the RSC loss terms."""

    def forward(self, features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                pinv: torch.Tensor, q: float, need_grad: bool = True) -> tuple[torch.Tensor, ...]:
        """(terms, dJ_D/dF~, dJ_MSE/dF~, dJ_L/dlogits), terms = (J_L, J_D, J_MSE) as one 3-vector.

        Without `need_grad` (validation) the gradients are skipped and None.
        """


def loss_terms(engine: LossEngine, features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
               pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE) by `engine`; its gradients are formed only when autograd will ask for them."""
    if torch.is_grad_enabled() and (features.requires_grad or logits.requires_grad):
        return tuple(FusedDRCLLoss.apply(features, targets, logits, pinv, q, engine).unbind())
    return tuple(engine.forward(features, targets, logits, pinv, q, need_grad=False)[0].unbind())


def combine(g_terms: torch.Tensor, d_features_d: torch.Tensor, d_features_mse: torch.Tensor,
            d_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of sum_t g_t J_t for features and logits, from the forward's per-term gradients."""
    return (d_features_d * g_terms[1]).addcmul_(d_features_mse, g_terms[2]), d_logits * g_terms[0]


class FusedDRCLLoss(torch.autograd.Function):
    """(J_L, J_D, J_MSE) with gradients for features and logits; targets and L are constants.

    The engine forms each term's gradient in the forward pass, so the backward
    only scales and adds them: nothing is recomputed.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                pinv: torch.Tensor, q: float, engine: LossEngine) -> torch.Tensor:
        terms, *grads = engine.forward(features, targets, logits, pinv, q)
        ctx.save_for_backward(*grads)
        return terms

    @staticmethod
    def backward(ctx, g_terms: torch.Tensor):
        grad_features, grad_logits = combine(g_terms, *ctx.saved_tensors)
        return grad_features, None, grad_logits, None, None, None
