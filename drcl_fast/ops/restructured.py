"""The RSC loss's fast paths outside Triton: the half both engines share, and the CPU engine.

**Shared with the Triton engine** (``drcl_fast.kernels.drcl_loss``). Both fast engines compute
(J_L, J_D, J_MSE) *and* their gradients in one forward pass, never holding a B x B matrix,
from the same C-space pieces (``prepare``; docs/design.md, section 4):

- ``P = F~ L^T`` (B x C), so ``r_i . f~_j = y~_i . P_j`` (the cross Gram is B x C x B);
- ``YK = y~ (L L^T)`` (B x C), so ``r_i . r_j = YK_i . y~_j`` and ``|r_i|^2 = YK_i . y~_i``;
- only ``F~ F~^T`` is a B x B x D product.

``FusedDRCLLoss`` saves the three gradients and its backward only scales and adds them;
``loss_custom_op`` registers an engine as a ``torch.library`` custom op for torch.compile.
None of it needs Triton: the CPU path runs where Triton is not installed.

**The CPU engine**: C-space algebra and symmetric row panels in PyTorch. Same terms as
``reference.drcl_loss_terms``, from far less work (docs/kernels.md has the measurements):

- with hats for unit rows, ``cos2(a_i, b_j) = 2 a^_i . b^_j`` when the clamp
  ``max(|a_i| |b_j|, 1e-6)`` does not bind, so every cosine comes straight out of a
  GEMM on pre-scaled rows;
- J_D's first term needs ``b = F^ F^^T``, the only B x B x D product, and
  ``a = R^ R^^T = y^ K y^^T`` (K = L L^T) from C-space. ``b`` is symmetric: row panel
  ``[i0, i1)`` meets only columns ``>= i0``, the mirrored part counts twice, the panel's
  diagonal block is half computed and half transposed, and the gradient
  ``-(16 / B^2) (a - b) F^`` flows to rows and columns from the same panel (about 0.6 of a
  full product forward, one backward, where the reference does three each);
- J_D's second term, over ``X = R^ F^^T = y^ P^^T`` (P^ = F^ L^T), has rank <= C and
  lives wholly in C-space: ``sum (x_ij - x_ji)^2 = 2 |X|^2 - 2 tr(X X)`` from C x C
  Gram matrices, in float64 because the two sums nearly cancel; its gradient through
  P^ rides in the panels' GEMMs, and P itself comes from the logits where that is sound;
- the gradients are formed in the same pass, so the backward only scales them.

A panel holds ``(B + C) x PANEL_ROWS`` values at a time: no B x B matrix exists.
A zero recast row (a target row with no class) has the unit row 0, whose cosines are the
reference's 0. When some other pair's clamp can bind (a row of norm near zero, checked per
call), the unit-row algebra does not hold and ``pairwise_terms`` forms the B x B cosines
as the reference does.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from drcl_fast.kernels import custom_op
from drcl_fast.ops import reference
from drcl_fast.ops.pinv import Core, pinv_core
from drcl_fast.ops.recast import scaled_residual, sparse_rows

# Label products gather where rows are at most 1 / 16 nonzero: from there a gather of a row's
# few classes beats a C-wide product (docs/kernels.md has the timings).
SPARSE_LABELS_ABOVE = 16
# Rows per panel, and the size down to which a panel's diagonal block is split in halves: smaller
# panels and blocks make GEMMs too small to run at peak (docs/kernels.md, "The loss on the CPU").
PANEL_ROWS = 512
# P = f~ L^T from the logits (see coordinates): from this many classes, where the B x D x C product
# costs more than the check; for priors with cond(W)^2 up to this, since the route multiplies the
# logits' rounding by cond(W); rows agreeing along the probe to this many roundings of their terms.
LOGITS_ROUTE_MIN_CLASSES = 32
LOGITS_ROUTE_MAX_CONDITION = 4.0
PROBE_MARGIN = 32.0
MIN_SPLIT_ROWS = 128
SUM_CHUNK = 1 << 18   # values squared at a time: a small temporary, reused from the heap


# ---------------------------------------------------------------- shared with the Triton engine


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


def check_shapes(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor) -> None:
    """Raise ValueError unless features (B, D), targets (B, C), logits (B, C) and pinv (C, D) fit together."""
    shapes = {"features": features.shape, "targets": targets.shape, "logits": logits.shape, "pinv": pinv.shape}
    if any(len(shape) != 2 for shape in shapes.values()):
        raise ValueError(f"the RSC loss takes 2-D tensors; got shapes {shapes}")
    (b, d), c = features.shape, targets.shape[1]
    if targets.shape[0] != b or logits.shape != (b, c) or pinv.shape != (c, d):
        raise ValueError(f"the RSC loss needs features (B, D), targets (B, C), logits (B, C) and pinv (C, D); "
                         f"got {', '.join(f'{name} {tuple(shape)}' for name, shape in shapes.items())}")


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


def loss_terms(engine: LossEngine, features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
               pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE) by `engine`; its gradients are formed only when autograd will ask for them."""
    if torch.is_grad_enabled() and (features.requires_grad or logits.requires_grad):
        return tuple(FusedDRCLLoss.apply(features, targets, logits, pinv, q, engine).unbind())
    return tuple(engine.forward(features, targets, logits, pinv, q, need_grad=False)[0].unbind())


def loss_custom_op(name: str, engine: LossEngine) -> Callable | None:
    """`engine` as the custom op ``drcl_fast::drcl_loss_<name>`` (``kernels/custom_op.py``), called as
    ``loss_terms`` is; None where torch has no custom ops.

    The forward op returns the terms and the three gradients (marked non-differentiable and saved);
    the backward rule scales and adds them as ``FusedDRCLLoss`` does.
    """
    if not custom_op.AVAILABLE:
        return None

    @torch.library.custom_op(f"drcl_fast::drcl_loss_{name}", mutates_args=())
    def forward(features: Tensor, targets: Tensor, logits: Tensor, pinv: Tensor, q: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return engine.forward(features, targets, logits, pinv, q)

    @forward.register_fake
    def _(features, targets, logits, pinv, q):
        return features.new_empty(3), torch.empty_like(features), torch.empty_like(features), \
            torch.empty_like(logits)

    def setup(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:])

    def backward(ctx, g_terms, *_unused):
        grad_features, grad_logits = combine(g_terms, *ctx.saved_tensors)
        return grad_features, None, grad_logits, None, None

    forward.register_autograd(backward, setup_context=setup)
    return lambda features, targets, logits, pinv, q: tuple(
        forward(features, targets, logits, pinv, float(q))[0].unbind())


# ---------------------------------------------------------------- the CPU engine


def pays_off(b: int, d: int, c: int) -> bool:
    """Whether the restructured loss beats the reference at B x D features with C classes.

    It saves about 4.25 B^2 D multiply-adds and the reference's passes over B x B matrices,
    and adds C-space work (about B C^2) and a fixed cost per call: B (D + 512) >= 6 C^2 + 10^7 / B,
    fitted to a grid of forward+backward timings (bench/cpu/loss_grid.py; docs/kernels.md).
    """
    return b * (d + 512) >= 6 * c * c + 1e7 / b


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
    """True when some pair's |a| |b| falls below the cosine's clamp where unit rows cannot follow it.

    Every row meets itself (cos2(r_i, r_i), cos2(f_i, f_i)), so the smallest product
    is the smallest norm squared. Zero recast rows do not count: their cosines are 0,
    as a zero unit row's are, and r is a constant, so no gradient differs either. A zero
    feature row does: there the clamp gives cos2(f_i, f_j) the gradient 2 f_j / 1e-6.
    """
    smallest_recast = torch.where(nr > 0, nr, torch.inf).min()
    return bool(torch.minimum(nf.min(), smallest_recast) ** 2 < reference.COS_EPS)


def inverse_norms(norms: torch.Tensor) -> torch.Tensor:
    """1 / |r_i| as a column, 0 for a zero row: its unit row is 0 and every cosine with it 0."""
    return torch.where(norms > 0, norms.reciprocal(), 0.0)[:, None]


class Labels:
    """Label rows, dense or as (classes, weights) where rows are sparse.

    Only the products the loss needs: with two nonzeros a row, a gather of two rows or
    columns (``embedding_bag``, ``index_add_``) replaces a C-wide product.
    """

    def __init__(self, dense: torch.Tensor, sparse: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.dense, self.sparse = dense, sparse

    @classmethod
    def of(cls, targets: torch.Tensor, sparse: tuple[torch.Tensor, torch.Tensor] | None) -> "Labels":
        """`sparse` is ``sparse_rows(targets)``; kept where rows are at most 1 / SPARSE_LABELS_ABOVE nonzero."""
        narrow = sparse is not None and sparse[0].shape[1] * SPARSE_LABELS_ABOVE <= targets.shape[1]
        return cls(targets, sparse if narrow else None)

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


def within_terms(stack: torch.Tensor, b_total: int, labels: Labels, yk_hat: torch.Tensor,
                 d_p: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """J_D's first term (4 / B^2) sum_ij (a_ij - b_ij)^2, one symmetric panel at a time, and with `d_p`
    (dJ/dP^, B x C) the gradient of J_D for F^.

    `stack` is [F^; L] ((B + C) x D, or F^ alone without `d_p`). a = R^R^^T in C-space
    (a_ij = y^_i . yk^_j) and b = F^F^^T; the gradient is -(16 / B^2) (a - b) F^ over the
    whole symmetric matrix, plus dP^ L for the cross term. Each panel is held transposed,
    columns [i0, B) by rows [i0, i1): the C-space product comes out in that layout, the
    mirrored block is then whole rows, and the rows' dP^ stacked under the panel meets L
    stacked under F^, so the panel's row gradient and the cross term's are one product.
    """
    scale = 16.0 / b_total ** 2
    f_hat = stack[:b_total]
    grad = None if d_p is None else stack.new_empty(f_hat.shape)
    sums = stack.new_zeros(())
    for i0 in range(0, b_total, PANEL_ROWS):
        i1 = min(i0 + PANEL_ROWS, b_total)
        rows, cols = slice(i0, i1), slice(i0, b_total)
        f_i, f_j = f_hat[rows], f_hat[cols]
        panel = stack.new_empty(stack.shape[0] - i0, i1 - i0)
        w1 = panel[:b_total - i0]   # (a - b)[cols, rows]
        _panel_gram(w1, labels.times(cols, yk_hat[rows]), f_j, f_i)
        sums += _sum_of_squares(w1) + _sum_of_squares(w1[i1 - i0:])   # the mirrored block counts twice
        if grad is not None:
            torch.mul(d_p[rows].t(), -1.0 / scale, out=panel[b_total - i0:])
            # The first panel writes every row of the gradient once (beta = 0: the memory is new).
            first = 0.0 if i0 == 0 else 1.0
            grad[rows].addmm_(panel.t(), stack[i0:], beta=first, alpha=-scale)
            grad[i1:].addmm_(w1[i1 - i0:], f_i, beta=first, alpha=-scale)
    return sums * (scale / 4.0), grad


def _panel_gram(out: torch.Tensor, a: torch.Tensor, f_j: torch.Tensor, f_i: torch.Tensor) -> None:
    """out = a - f_j f_i^T, where f_i is the first rows of f_j: the panel's top block is symmetric.

    The block's upper half comes from its lower half by transposition, and its top-left
    quarter by the same rule again, down to MIN_SPLIT_ROWS: at B = 1,024 the forward does
    0.59 of a full B x B x D product instead of 0.75.
    """
    half = f_i.shape[0] // 2
    if half < MIN_SPLIT_ROWS:
        torch.addmm(a, f_j, f_i.t(), alpha=-1.0, out=out)
        return
    torch.addmm(a[half:], f_j[half:], f_i.t(), alpha=-1.0, out=out[half:])
    top = out.new_empty(half, half)
    _panel_gram(top, a[:half, :half], f_i[:half], f_i[:half])
    out[:half, :half] = top
    out[:half, half:] = out[half:f_i.shape[0], :half].t()


def cross_terms(labels: Labels, p_hat: torch.Tensor, need_grad: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """J_D's second term and its gradient for P^ = F^ L^T, wholly in C-space (`labels`: y^).

    With X = R^F^^T = Y^ P^^T (B x B, rank <= C): (4 / B^2) sum_ij (x_ij - x_ji)^2 =
    (8 / B^2) (<P^, P^ Y^^T Y^> - <N, N^T>) with N = P^^T Y^ (C x C); the gradient is
    (16 / B^2) (P^ Y^^T Y^ - Y^ N), from the same B x C product. Both differences cancel
    when X is nearly symmetric (exactly, at B = 1), where the pairwise form subtracts x_ji
    from x_ij entry by entry, so they are formed in float64 (C x C and B x C work): then
    only the float32 rounding of P^ and Y^ remains, as in the pairwise form.
    """
    b_total = p_hat.shape[0]
    wide_labels, wide_p = labels.to(torch.float64), p_hat.double()
    pg = wide_p @ wide_labels.gram()
    n = wide_labels.transposed_times(wide_p).t()
    value = (8.0 / b_total ** 2) * ((wide_p * pg).sum() - (n * n.t()).sum())
    if not need_grad:
        return value.to(p_hat.dtype), None
    d_p = pg.sub_(wide_labels.times(slice(None), n.t())).mul_(16.0 / b_total ** 2)
    return value.to(p_hat.dtype), d_p.to(p_hat.dtype)


def coordinates(features: torch.Tensor, nf: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor,
                core: Core) -> torch.Tensor:
    """P = f~ L^T (B x C), as the logits times K where they are f~ W, else by the B x D x C product.

    For L = W+, L^T = W (W^T W)+ = W K, so f~ L^T = (f~ W) K: one B x C x C product. The loss
    is documented to take the logits f~ W, but does not rely on it: one fixed direction v checks
    (f~ W) K v against f~ (L^T v) row by row (two matrix-vector products) and any row off by
    more than rounding sends the call to the product. Taken only for well-conditioned priors
    (cond(W) <= 2: the route multiplies the logits' rounding by cond(W)) and C >= 32.
    """
    b, d = features.shape
    c = pinv.shape[0]
    if (c < LOGITS_ROUTE_MIN_CLASSES or core.condition > LOGITS_ROUTE_MAX_CONDITION
            or logits.shape != (b, c) or logits.dtype != features.dtype):
        return features @ pinv.t()
    k = core.gram.to(features.dtype)
    v = torch.randn(c, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(features)
    u, kv = pinv.t() @ v, k @ v
    direct, via_logits = features @ u, logits @ kv
    scale = nf * u.norm() + logits.norm(dim=1) * kv.norm()
    rounding = PROBE_MARGIN * math.sqrt(d) * torch.finfo(features.dtype).eps
    if bool(((direct - via_logits).abs() <= rounding * scale).all()):
        return logits @ k
    return features @ pinv.t()


def finish_rows(grad: torch.Tensor, f_hat: torch.Tensor, features: torch.Tensor, inv_nf: torch.Tensor,
                targets: torch.Tensor, pinv: torch.Tensor, sparse: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """J_MSE and its gradient -(2 / BD)(r - f~), written over `f_hat`; `grad` (dJ_D/dF^) becomes
    dJ_D/dF~ in place.

    Through the row normalisation the gradient is (g - f^ (f^ . g)) / |f~|. F^ is not needed
    after that, and its memory takes J_MSE's gradient: no new B x D buffer, so a lower peak
    and fewer fresh pages to fault in.
    """
    scale = -2.0 / features.numel()
    row_dots = torch.bmm(f_hat.unsqueeze(1), grad.unsqueeze(2)).view(-1, 1)   # no B x D temporary
    grad.addcmul_(f_hat, row_dots, value=-1.0).mul_(inv_nf)
    d_mse = scaled_residual(targets, pinv, features, scale, sparse, out=f_hat)
    return _sum_of_squares(d_mse) / (scale * scale * features.numel()), d_mse


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """torch's cascaded sums of the squares, SUM_CHUNK values at a time: with f~ near r, a BLAS
    dot (float32, in order) and torch.linalg.vector_norm lose digits the reference keeps."""
    rows = max(1, SUM_CHUNK // max(1, x.shape[1]))
    return sum(x[i:i + rows].square().sum() for i in range(0, x.shape[0], rows))


def _cos2(dots: torch.Tensor, na: torch.Tensor, nb: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``reference.cos2`` from the pairs' dot products: (cos2, max(|a| |b|, 1e-6), where the clamp is free)."""
    products = na[:, None] * nb[None, :]
    den = products.clamp_min(reference.COS_EPS)
    return 2.0 * dots / den, den, products >= reference.COS_EPS


def pairwise_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor,
                   q: float, need_grad: bool) -> tuple[torch.Tensor, ...]:
    """The engine's outputs for a batch where some pair's clamp binds, formed as the reference forms them.

    The B x B cosines with the clamp per pair, and their gradients in closed form, the
    clamp's stopped where it binds as autograd stops it: not autograd itself, which a
    custom op runs below (under torch.compile). With w1 = cos2(r, r) - cos2(f~, f~) and
    w2 = X - X^T, X = cos2(r, f~): dJ_D/dcos2(f~_i, f~_j) = -2 w1_ij / B^2 and
    dJ_D/dx_ij = 4 w2_ij / B^2; through cos2 = 2 dot / den, 2 / den reaches the dot
    and -cos2 / den the norms, where the clamp is free.
    """
    b = features.shape[0]
    recast = targets @ pinv
    nf, nr = features.norm(dim=1), recast.norm(dim=1)
    c_ff, den_ff, free_ff = _cos2(features @ features.t(), nf, nf)
    x, den_x, free_x = _cos2(recast @ features.t(), nr, nf)
    w1, w2 = _cos2(recast @ recast.t(), nr, nr)[0] - c_ff, x - x.t()
    residual = features - recast
    j_d, j_mse = w1.square().mean() + w2.square().mean(), residual.square().mean()
    if not need_grad:
        return torch.stack([reference.gce_loss(logits, targets, q), j_d, j_mse]), None, None, None
    g_ff, g_x = w1 * (-2.0 / b ** 2), w2 * (4.0 / b ** 2)
    d_nf = (2.0 * torch.where(free_ff, -g_ff * c_ff / den_ff, 0.0) @ nf
            + torch.where(free_x, -g_x * x / den_x, 0.0).t() @ nr)
    d_d = (4.0 * g_ff / den_ff) @ features + (2.0 * g_x / den_x).t() @ recast
    d_d += inverse_norms(nf) * d_nf[:, None] * features   # a zero row's norm has gradient 0, as in torch
    j_l, d_logits = gce_value_and_grad(logits, targets, q)
    return torch.stack([j_l, j_d, j_mse]), d_d, residual * (2.0 / features.numel()), d_logits


class RestructuredEngine:
    """The ``LossEngine`` of the CPU path (any device runs it; it is tuned for CPUs)."""

    def forward(self, features, targets, logits, pinv, q, need_grad=True):
        sparse = sparse_rows(targets)
        labels = Labels.of(targets, sparse)
        core = pinv_core(pinv)
        yk = labels.to(core.gram.dtype).times(slice(None), core.gram)   # K is symmetric
        nf = features.norm(dim=1)
        cs = prepare(features, targets, pinv, yk, nf, coordinates(features, nf, logits.detach(), pinv, core))
        if clamp_may_bind(cs.nf, cs.nr):
            return pairwise_terms(features, targets, logits, pinv, q, need_grad)
        inv_nf, inv_nr = cs.nf.reciprocal()[:, None], inverse_norms(cs.nr)
        b_total = features.shape[0]
        stack = features.new_empty(b_total + (pinv.shape[0] if need_grad else 0), features.shape[1])
        f_hat = torch.mul(features, inv_nf, out=stack[:b_total])
        if need_grad:
            stack[b_total:] = pinv
        unit_labels = labels.scaled(inv_nr)
        j_cross, d_p = cross_terms(unit_labels, cs.p * inv_nf, need_grad)
        j_within, grad = within_terms(stack, b_total, unit_labels, cs.yk * inv_nr, d_p)
        j_d = j_within + j_cross
        if not need_grad:
            j_mse = _sum_of_squares(scaled_residual(targets, pinv, features, 1.0, sparse)) / features.numel()
            return torch.stack([reference.gce_loss(logits, targets, q), j_d, j_mse]), None, None, None
        j_mse, d_mse = finish_rows(grad, f_hat, features, inv_nf, targets, pinv, sparse)
        j_l, d_logits = gce_value_and_grad(logits, targets, q)
        return torch.stack([j_l, j_d, j_mse]), grad, d_mse, d_logits


ENGINE = RestructuredEngine()


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE), as ``reference.drcl_loss_terms``; gradients reach features and logits."""
    return loss_terms(ENGINE, features, targets, logits, pinv, q)


# What dispatch hands out: the Function eagerly, the custom op while torch.compile traces.
entry = custom_op.eager_or_compiled(drcl_loss_terms, loss_custom_op("restructured", ENGINE))


def drcl_loss_gradients(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor,
                        q: float, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss with no autograd graph, for a training step that takes its gradients by hand.

    Args:
        features, targets, logits, pinv, q: as for ``drcl_loss_terms``.
        weights: the terms' factors in the objective, (eta, alpha, beta).

    Returns:
        ((J_L, J_D, J_MSE) stacked, d(weights . J)/dfeatures, d(weights . J)/dlogits): the values
        ``drcl_loss_terms`` gives under autograd.
    """
    check_shapes(features, targets, logits, pinv)
    terms, *grads = ENGINE.forward(features, targets, logits, pinv, q, need_grad=True)
    return (terms, *combine(weights.to(terms), *grads))
