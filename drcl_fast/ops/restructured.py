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
import torch.nn.functional as F

from drcl_fast.kernels.fused_loss import loss_terms, prepare
from drcl_fast.ops import reference
from drcl_fast.ops.recast import recast, sparse_rows

# Panels gather label columns when rows are at most 1 / 16 nonzero. Measured on a 2-core CPU at
# B = 1,024, D = 2,048 with two nonzeros a row: gathers 54 ms against products 60 ms at C = 200,
# but 62 against 56 at C = 10, where the C-wide products are already cheap.
SPARSE_PANELS_ABOVE = 16
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
    """True when some pair's |a| |b| falls below the cosine's clamp.

    Every row meets itself (cos2(r_i, r_i), cos2(f_i, f_i)), so the smallest product
    is the smallest norm squared.
    """
    return bool(torch.minimum(nf.min(), nr.min()) ** 2 < reference.COS_EPS)


class UnitLabels:
    """The unit-row targets y^ = y~ / |r|, dense or as (classes, weights) where rows are sparse.

    Only the two products the panels need: with two nonzeros a row, a gather of two
    columns replaces a C-wide product (``embedding_bag`` and ``index_add_``).
    """

    def __init__(self, targets: torch.Tensor, inv_nr: torch.Tensor) -> None:
        self.dense = targets * inv_nr
        sparse = sparse_rows(targets, SPARSE_PANELS_ABOVE)
        self.sparse = None if sparse is None else (sparse[0], sparse[1] * inv_nr)

    def times(self, rows: slice, other: torch.Tensor) -> torch.Tensor:
        """y^[rows] @ other^T, for `other` of C columns."""
        if self.sparse is None:
            return self.dense[rows] @ other.t()
        classes, weights = self.sparse
        return F.embedding_bag(classes[rows], other.t(), per_sample_weights=weights[rows], mode="sum")

    def add_transposed_times(self, rows: slice, coeffs: torch.Tensor, out: torch.Tensor, alpha: float) -> None:
        """out += alpha coeffs^T @ y^[rows], for `coeffs` of len(rows) rows."""
        if self.sparse is None:
            out.addmm_(coeffs.t(), self.dense[rows], alpha=alpha)
            return
        classes, weights = self.sparse
        for k in range(classes.shape[1]):
            out.index_add_(1, classes[rows, k], coeffs.t() * weights[rows, k], alpha=alpha)


def pair_terms(f_hat: torch.Tensor, labels: UnitLabels, yk_hat: torch.Tensor, p_hat: torch.Tensor,
               need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """J_D, and its gradients for F^ and P^ = F^ L^T, from unit-row quantities, one symmetric panel at a time.

    J_D = (4 / B^2) sum_ij [(a_ij - b_ij)^2 + (x_ij - x_ji)^2] with a = R^R^^T,
    b = F^F^^T and x = R^F^^T; a_ij = y^_j . yk^_i and x_ij = y^_i . p^_j in C-space.
    """
    b_total = f_hat.shape[0]
    scale = 16.0 / b_total ** 2
    grad = f_hat.new_zeros(f_hat.shape) if need_grad else None
    d_p = p_hat.new_zeros(p_hat.shape) if need_grad else None
    sums = f_hat.new_zeros(())
    for i0 in range(0, b_total, PANEL_ROWS):
        i1 = min(i0 + PANEL_ROWS, b_total)
        rows, cols, off = slice(i0, i1), slice(i0, None), slice(i1 - i0, None)
        f_i, f_j = f_hat[rows], f_hat[cols]
        # Within: w1_ij = a_ij - b_ij; dJ/dF^ = -(16 / B^2) w1 F^ over the whole symmetric w1.
        w1 = torch.addmm(labels.times(cols, yk_hat[rows]).t(), f_i, f_j.t(), alpha=-1.0)
        # Cross: w2_ij = x_ij - x_ji, antisymmetric; (i, j) feeds p^_j, the mirrored (j, i) feeds p^_i.
        w2 = labels.times(rows, p_hat[cols]).sub_(labels.times(cols, p_hat[rows]).t())
        sums += _symmetric_sum_of_squares(w1, off) + _symmetric_sum_of_squares(w2, off)
        if need_grad:
            grad[rows].addmm_(w1, f_j, alpha=-scale)
            grad[i1:].addmm_(w1[:, off].t(), f_i, alpha=-scale)
            labels.add_transposed_times(rows, w2, d_p[cols], scale)
            labels.add_transposed_times(slice(i1, None), w2[:, off].t(), d_p[rows], -scale)
    return sums * (scale / 4.0), grad, d_p


def _symmetric_sum_of_squares(w: torch.Tensor, off: slice) -> torch.Tensor:
    """Sum of w^2 over the whole (anti)symmetric matrix: the panel's mirrored part counts twice."""
    flat = w.view(-1)
    mirrored = w[:, off]
    return torch.dot(flat, flat) + (mirrored * mirrored).sum()


def _reference_terms(features, targets, logits, pinv, q, need_grad):
    """The reference's terms and, by autograd, each term's gradient (the clamp-binding case)."""
    with torch.enable_grad():
        f, p = features.detach().requires_grad_(need_grad), logits.detach().requires_grad_(need_grad)
        j_l, j_d, j_mse = reference.drcl_loss_terms(f, targets, p, pinv, q)
        terms = torch.stack([j_l, j_d, j_mse]).detach()
        if not need_grad:
            return terms, None, None, None
        d_d, = torch.autograd.grad(j_d, f, retain_graph=True)
        return terms, d_d, torch.autograd.grad(j_mse, f)[0], torch.autograd.grad(j_l, p)[0]


class RestructuredEngine:
    """The ``LossEngine`` of the CPU path (any device runs it; it is tuned for CPUs)."""

    name = "restructured"

    def forward(self, features, targets, logits, pinv, q, need_grad=True):
        cs = prepare(features, targets, pinv)
        if clamp_may_bind(cs.nf, cs.nr):
            return _reference_terms(features, targets, logits, pinv, q, need_grad)
        inv_nf, inv_nr = cs.nf.reciprocal()[:, None], cs.nr.reciprocal()[:, None]
        f_hat = features * inv_nf
        j_d, grad, d_p = pair_terms(f_hat, UnitLabels(targets, inv_nr), cs.yk * inv_nr, cs.p * inv_nf, need_grad)
        diff = recast(targets, pinv).sub_(features)
        flat = diff.view(-1)
        j_mse = torch.dot(flat, flat) / flat.numel()
        if not need_grad:
            return torch.stack([reference.gce_loss(logits, targets, q), j_d, j_mse]), None, None, None
        grad.addmm_(d_p, pinv)
        # Through the row normalisation: (g - f^ (f^ . g)) / |f|.
        grad.addcmul_(f_hat, (f_hat * grad).sum(dim=1, keepdim=True), value=-1.0).mul_(inv_nf)
        j_l, d_logits = gce_value_and_grad(logits, targets, q)
        return torch.stack([j_l, j_d, j_mse]), grad, diff.mul_(-2.0 / flat.numel()), d_logits


ENGINE = RestructuredEngine()


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE), as ``reference.drcl_loss_terms``; gradients reach features and logits."""
    return loss_terms(ENGINE, features, targets, logits, pinv, q)
