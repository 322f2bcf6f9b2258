"""The CPU fast path of the RSC loss: C-space algebra and symmetric row panels in PyTorch.

Same terms as ``reference.drcl_loss_terms``, from far less work (DESIGN.md section 4):

- with hats for unit rows, ``cos2(a_i, b_j) = 2 a^_i . b^_j`` when the clamp
  ``max(|a_i| |b_j|, 1e-6)`` does not bind, so every cosine comes straight out of a
  GEMM on pre-scaled rows;
- J_D's first term needs ``b = F^ F^^T``, the only B x B x D product, and
  ``a = R^ R^^T = y^ K y^^T`` (K = L L^T) from C-space. ``b`` is symmetric: row panel
  ``[i0, i1)`` meets only columns ``>= i0``, the mirrored part counts twice, and the
  gradient ``-(16 / B^2) (a - b) F^`` flows to rows and columns from the same panel
  (0.625 of a full product forward, one backward, where the reference does three each);
- J_D's second term, over ``X = R^ F^^T = y^ P^^T`` (P^ = F^ L^T), has rank <= C and
  lives wholly in C-space: ``sum (x_ij - x_ji)^2 = 2 |X|^2 - 2 tr(X X)`` from C x C
  Gram matrices, in float64 because the two sums nearly cancel;
- the gradients are formed in the same pass, so the backward only scales them.

A panel holds ``PANEL_ROWS x B`` values at a time: no B x B matrix exists.
When some pair's clamp can bind (a row of norm near zero, checked per call), the
reference's exact autograd runs instead: the hats are undefined there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from drcl_fast.kernels.fused_loss import loss_terms, prepare
from drcl_fast.ops import reference
from drcl_fast.ops.pinv import pinv_core
from drcl_fast.ops.recast import recast, sparse_rows

# Label products gather where rows are at most 1 / 16 nonzero. Measured on a 2-core CPU at
# B = 1,024, D = 2,048 with two nonzeros a row: the cross term takes 3.1 ms gathering against
# 5.3 ms multiplying at C = 200, the same at C = 40; the panels' C-space products cost the same.
SPARSE_LABELS_ABOVE = 16
PANEL_ROWS = 256   # rows per panel; measured on a 2-core CPU: 128 to 512 rows are within 10%
SUM_CHUNK = 1 << 20   # values squared at a time: bounds the temporary, keeps a panel in one piece


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


class Labels:
    """Label rows, dense or as (classes, weights) where rows are sparse.

    Only the products the loss needs: with two nonzeros a row, a gather of two rows or
    columns (``embedding_bag``, ``index_add_``) replaces a C-wide product.
    """

    def __init__(self, dense: torch.Tensor, sparse: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.dense, self.sparse = dense, sparse

    @classmethod
    def of(cls, targets: torch.Tensor) -> "Labels":
        return cls(targets, sparse_rows(targets, SPARSE_LABELS_ABOVE))

    def scaled(self, row_scale: torch.Tensor) -> "Labels":
        """Each row times `row_scale` (B x 1)."""
        return Labels(self.dense * row_scale, None if self.sparse is None else (self.sparse[0],
                                                                               self.sparse[1] * row_scale))

    def to(self, dtype: torch.dtype) -> "Labels":
        """In `dtype`; sparse labels keep their dense rows as they are (no product reads them)."""
        if self.sparse is None:
            return Labels(self.dense.to(dtype), None)
        return Labels(self.dense, (self.sparse[0], self.sparse[1].to(dtype)))

    def gram(self) -> torch.Tensor:
        """labels^T @ labels (C x C)."""
        if self.sparse is None:
            return self.dense.t() @ self.dense
        classes, weights = self.sparse
        c = self.dense.shape[1]
        out = weights.new_zeros(c, c)
        for k in range(classes.shape[1]):
            for m in range(classes.shape[1]):
                out.index_put_((classes[:, k], classes[:, m]), weights[:, k] * weights[:, m], accumulate=True)
        return out

    def times(self, rows: slice, other: torch.Tensor) -> torch.Tensor:
        """labels[rows] @ other^T, for `other` of C columns."""
        if self.sparse is None:
            return self.dense[rows] @ other.t()
        classes, weights = self.sparse
        return F.embedding_bag(classes[rows], other.t(), per_sample_weights=weights[rows], mode="sum")

    def transposed_times(self, other: torch.Tensor) -> torch.Tensor:
        """labels^T @ other (C x k), for `other` of B rows."""
        if self.sparse is None:
            return self.dense.t() @ other
        classes, weights = self.sparse
        out = other.new_zeros(self.dense.shape[1], other.shape[1])
        for k in range(classes.shape[1]):
            out.index_add_(0, classes[:, k], other * weights[:, k:k + 1])
        return out


def within_terms(f_hat: torch.Tensor, labels: Labels, yk_hat: torch.Tensor, need_grad: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """J_D's first term (4 / B^2) sum_ij (a_ij - b_ij)^2 and its gradient for F^, one symmetric panel at a time.

    a = R^R^^T in C-space (a_ij = y^_i . yk^_j) and b = F^F^^T; the gradient is
    -(16 / B^2) (a - b) F^ over the whole symmetric matrix. Each panel is held
    transposed, columns [i0, B) by rows [i0, i1): the C-space product comes out in
    that layout, and the mirrored block is then whole rows.
    """
    b_total = f_hat.shape[0]
    scale = 16.0 / b_total ** 2
    grad = f_hat.new_zeros(f_hat.shape) if need_grad else None
    sums = f_hat.new_zeros(())
    for i0 in range(0, b_total, PANEL_ROWS):
        i1 = min(i0 + PANEL_ROWS, b_total)
        rows, cols = slice(i0, i1), slice(i0, None)
        f_i, f_j = f_hat[rows], f_hat[cols]
        w1 = torch.addmm(labels.times(cols, yk_hat[rows]), f_j, f_i.t(), alpha=-1.0)   # (a - b)[cols, rows]
        sums += _sum_of_squares(w1) + _sum_of_squares(w1[i1 - i0:])   # the mirrored block counts twice
        if need_grad:
            grad[rows].addmm_(w1.t(), f_j, alpha=-scale)
            grad[i1:].addmm_(w1[i1 - i0:], f_i, alpha=-scale)
    return sums * (scale / 4.0), grad


def cross_terms(labels: Labels, p_hat: torch.Tensor, need_grad: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """J_D's second term and its gradient for P^ = F^ L^T, wholly in C-space (`labels`: y^).

    With X = R^F^^T = Y^ P^^T (B x B, rank <= C): (4 / B^2) sum_ij (x_ij - x_ji)^2 =
    (8 / B^2) (<Y^^T Y^, P^^T P^> - <N, N^T>) with N = P^^T Y^ (C x C); the gradient
    is (16 / B^2) (P^ Y^^T Y^ - Y^ N). Both differences cancel when X is nearly symmetric
    (exactly, at B = 1), where the pairwise form subtracts x_ji from x_ij entry by entry,
    so they are formed in float64 (C x C and B x C work): then only the float32 rounding
    of P^ and Y^ remains, as in the pairwise form.
    """
    b_total = p_hat.shape[0]
    wide_labels, wide_p = labels.to(torch.float64), p_hat.double()
    gram_y = wide_labels.gram()
    n = wide_labels.transposed_times(wide_p).t()
    value = (8.0 / b_total ** 2) * ((gram_y * (wide_p.t() @ wide_p)).sum() - (n * n.t()).sum())
    if not need_grad:
        return value.to(p_hat.dtype), None
    d_p = (wide_p @ gram_y).sub_(wide_labels.times(slice(None), n.t())).mul_(16.0 / b_total ** 2)
    return value.to(p_hat.dtype), d_p.to(p_hat.dtype)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a * b).sum(1, keepdim=True), a panel of rows at a time: no B x D temporary."""
    return torch.cat([(a[i:i + PANEL_ROWS] * b[i:i + PANEL_ROWS]).sum(dim=1, keepdim=True)
                      for i in range(0, a.shape[0], PANEL_ROWS)])


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """torch's cascaded sums of the squares, in chunks of a million values. Measured against
    float64 with f~ near r: a BLAS dot (float32, in order) and torch.linalg.vector_norm both
    lost digits the reference keeps (J_MSE errors up to 5.7e-7 and 7.2e-7 against its 4e-9)."""
    rows = max(1, SUM_CHUNK // max(1, x.shape[1]))
    return sum(x[i:i + rows].square().sum() for i in range(0, x.shape[0], rows))


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

    def forward(self, features, targets, logits, pinv, q, need_grad=True):
        labels = Labels.of(targets)
        core = pinv_core(pinv)
        cs = prepare(features, targets, pinv, labels.to(core.dtype).times(slice(None), core))   # core = core^T
        if clamp_may_bind(cs.nf, cs.nr):
            return _reference_terms(features, targets, logits, pinv, q, need_grad)
        inv_nf, inv_nr = cs.nf.reciprocal()[:, None], cs.nr.reciprocal()[:, None]
        f_hat = features * inv_nf
        unit_labels = labels.scaled(inv_nr)
        j_within, grad = within_terms(f_hat, unit_labels, cs.yk * inv_nr, need_grad)
        j_cross, d_p = cross_terms(unit_labels, cs.p * inv_nf, need_grad)
        j_d = j_within + j_cross
        diff = recast(targets, pinv).sub_(features)
        j_mse = _sum_of_squares(diff) / diff.numel()
        if not need_grad:
            return torch.stack([reference.gce_loss(logits, targets, q), j_d, j_mse]), None, None, None
        grad.addmm_(d_p, pinv)
        # Through the row normalisation: (g - f^ (f^ . g)) / |f|.
        grad.addcmul_(f_hat, _row_dots(f_hat, grad), value=-1.0).mul_(inv_nf)
        j_l, d_logits = gce_value_and_grad(logits, targets, q)
        return torch.stack([j_l, j_d, j_mse]), grad, diff.mul_(-2.0 / diff.numel()), d_logits


ENGINE = RestructuredEngine()


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE), as ``reference.drcl_loss_terms``; gradients reach features and logits."""
    return loss_terms(ENGINE, features, targets, logits, pinv, q)
