"""The CPU fast path of the RSC loss: C-space algebra and symmetric row panels in PyTorch.

Same terms as ``reference.drcl_loss_terms``, from far less work (DESIGN.md section 4):

- with hats for unit rows, ``cos2(a_i, b_j) = 2 a^_i . b^_j`` when the clamp
  ``max(|a_i| |b_j|, 1e-6)`` does not bind, so every cosine comes straight out of a
  GEMM on pre-scaled rows, and J_D's gradient for F^ is two GEMMs with no
  elementwise work between them but one subtraction;
- every recast-target product lives in C-space: ``r^_i . r^_j = y^_i K y^_j`` with
  ``K = L L^T`` and ``r^_i . f^_j = y^_i . (f^_j L^T)``, so the only B x B x D products
  are ``F^ F^^T`` forward and its gradient;
- ``F^ F^^T`` is symmetric: row panel ``[i0, i1)`` meets only columns ``>= i0``, the
  mirrored part counts twice, and its gradient flows to both rows and columns
  (about 0.56 of a full product forward instead of one);
- the cross term pairs (i, j) with (j, i) in the same panel from two C-space
  products, so the transposed matrix is never formed;
- J_D's and J_L's gradients are formed while the panel is in cache, so the
  backward only scales them.

A panel holds ``PANEL_ROWS x B`` values at a time: no B x B matrix exists.
When some pair's clamp can bind (a row of norm near zero, checked per call), the
reference's exact autograd runs instead: the hats are undefined there.
"""
from __future__ import annotations

import torch

from drcl_fast.kernels.fused_loss import loss_terms, prepare
from drcl_fast.ops import reference
from drcl_fast.ops.recast import recast

PANEL_ROWS = 256   # rows per panel; measured on a 2-core CPU: 64 to 1,024 rows are within 25%, 256 best


def gce_value_and_grad(logits: torch.Tensor, targets: torch.Tensor, q: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """GCE and its gradient for the logits in closed form.

    With s = sum_c t_c softmax(p)_c, ds/dp_c = softmax(p)_c (t_c - s), and the
    per-row loss's derivative is -s^(q-1) for every q >= 0 (at q = 0, of -log s).
    """
    probs = torch.softmax(logits, dim=1)
    s = (targets * probs).sum(dim=1)
    loss = -torch.log(s) if q == 0 else (1.0 - s.pow(q)) / q
    ds = -s.pow(q - 1.0) / logits.shape[0]
    return loss.mean(), probs.mul_(targets - s[:, None]).mul_(ds[:, None])


def clamp_may_bind(nf: torch.Tensor, nr: torch.Tensor) -> bool:
    """True when some pair's |a| |b| may fall below the cosine's clamp."""
    smallest = torch.minimum(nf.min(), nr.min())
    return bool(smallest * torch.maximum(smallest, nf.min()) < reference.COS_EPS)


def pair_terms(f_hat: torch.Tensor, y_hat: torch.Tensor, yk_hat: torch.Tensor, p_hat: torch.Tensor,
               need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """J_D, and its gradients for F^ and P^ = F^ L^T, from unit-row quantities, one symmetric panel at a time.

    J_D = (4 / B^2) sum_ij [(a_ij - b_ij)^2 + (x_ij - x_ji)^2] with a = R^R^^T,
    b = F^F^^T and x = R^F^^T; a_ij = yk^_i . y^_j and x_ij = y^_i . p^_j in C-space.
    """
    b_total = f_hat.shape[0]
    scale = 16.0 / b_total ** 2
    grad = f_hat.new_zeros(f_hat.shape) if need_grad else None
    d_p = p_hat.new_zeros(p_hat.shape) if need_grad else None
    sums = f_hat.new_zeros(())
    for i0 in range(0, b_total, PANEL_ROWS):
        i1 = min(i0 + PANEL_ROWS, b_total)
        rows, cols, off = slice(i0, i1), slice(i0, None), slice(i1 - i0, None)
        f_i, f_j, y_i, y_j = f_hat[rows], f_hat[cols], y_hat[rows], y_hat[cols]
        # Within: w1_ij = a_ij - b_ij; dJ/dF^ = -(16 / B^2) w1 F^ over the whole symmetric w1.
        w1 = torch.addmm(yk_hat[rows] @ y_j.t(), f_i, f_j.t(), alpha=-1.0)
        # Cross: w2_ij = x_ij - x_ji, antisymmetric; (i, j) feeds p^_j, the mirrored (j, i) feeds p^_i.
        w2 = torch.addmm(y_i @ p_hat[cols].t(), p_hat[rows], y_j.t(), alpha=-1.0)
        sums += _symmetric_sum_of_squares(w1, off) + _symmetric_sum_of_squares(w2, off)
        if need_grad:
            grad[rows].addmm_(w1, f_j, alpha=-scale)
            grad[i1:].addmm_(w1[:, off].t(), f_i, alpha=-scale)
            d_p[cols].addmm_(w2.t(), y_i, alpha=scale)
            d_p[rows].addmm_(w2[:, off], y_hat[i1:], alpha=-scale)
    return sums * (scale / 4.0), grad, d_p


def _symmetric_sum_of_squares(w: torch.Tensor, off: slice) -> torch.Tensor:
    """Sum of w^2 over the whole (anti)symmetric matrix: the panel's mirrored part counts twice."""
    flat = w.view(-1)
    mirrored = w[:, off]
    return torch.dot(flat, flat) + (mirrored * mirrored).sum()


def _reference_terms(features, targets, logits, pinv, q, need_grad):
    """The reference's terms and, by autograd, the gradients of J_D and J_L (the clamp-binding case)."""
    with torch.enable_grad():
        f, p = features.detach().requires_grad_(need_grad), logits.detach().requires_grad_(need_grad)
        j_l, j_d, j_mse = reference.drcl_loss_terms(f, targets, p, pinv, q)
        terms = torch.stack([j_l, j_d, j_mse]).detach()
        if not need_grad:
            return terms, None, None
        return terms, torch.autograd.grad(j_d, f)[0], torch.autograd.grad(j_l, p)[0]


class RestructuredEngine:
    """The ``LossEngine`` of the CPU path (any device runs it; it is tuned for CPUs)."""

    name = "restructured"

    def forward(self, features, targets, logits, pinv, q, need_grad=True):
        cs = prepare(features, targets, pinv)
        if clamp_may_bind(cs.nf, cs.nr):
            return _reference_terms(features, targets, logits, pinv, q, need_grad)
        inv_nf, inv_nr = cs.nf.reciprocal()[:, None], cs.nr.reciprocal()[:, None]
        f_hat = features * inv_nf
        j_d, grad, d_p = pair_terms(f_hat, targets * inv_nr, cs.yk * inv_nr, cs.p * inv_nf, need_grad)
        j_mse = recast(targets, pinv).sub_(features).square_().mean()
        if not need_grad:
            return torch.stack([reference.gce_loss(logits, targets, q), j_d, j_mse]), None, None
        grad.addmm_(d_p, pinv)
        # Through the row normalisation: (g - f^ (f^ . g)) / |f|.
        grad.addcmul_(f_hat, (f_hat * grad).sum(dim=1, keepdim=True), value=-1.0).mul_(inv_nf)
        j_l, d_logits = gce_value_and_grad(logits, targets, q)
        return torch.stack([j_l, j_d, j_mse]), grad, d_logits

    def feature_grad(self, features, targets, pinv, d_features, g_d, g_mse):
        mse_scale = g_mse * (-2.0 / features.numel())
        return recast(targets, pinv).sub_(features).mul_(mse_scale).addcmul_(d_features, g_d)


ENGINE = RestructuredEngine()


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE), as ``reference.drcl_loss_terms``; gradients reach features and logits."""
    return loss_terms(ENGINE, features, targets, logits, pinv, q)
