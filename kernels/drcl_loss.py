"""The RSC loss (J_L, J_D, J_MSE) in Triton: J_D over tiles of pairs, gradients in the forward pass.

``_pair_kernel`` runs one program per tile (I, J) of the upper triangle, J >= I:
it forms the Gram tile ``F~_I F~_J^T`` (the only B x B x D work), the C-space
tiles ``YK_I y~_J^T``, ``y~_I P_J^T`` and ``P_I y~_J^T`` (``restructured.prepare``), applies
the clamp ``max(|a| |b|, 1e-6)`` per pair in registers, adds the tile's share of
J_D (twice for off-diagonal tiles: the (J, I) tile is its mirror) and scatters
its gradient to both row blocks: ``AF`` (B x D), ``dnf`` (B) and ``dP`` (B x C),
with atomic adds. The cross term's (i, j) and (j, i) entries are both in the tile,
so its transpose is never formed. Nothing B x B reaches memory; the tile sums
go to a small buffer and are added in a fixed order, so the loss value is
deterministic (the gradients' atomic adds are not, to float32 rounding).

``_mse_kernel`` recasts ``r = y~ L`` in registers (a C-wide dot per tile, never a
B x D tensor), sums ``(f~ - r)^2`` per tile and writes J_MSE's gradient
``2 (f~ - r) / (B D)`` from the same registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from drcl_fast.kernels import custom_op, probe_inputs
from drcl_fast.kernels.boundary import CONTIGUOUS, ROWS, Args
from drcl_fast.kernels.gce import gce_forward
from drcl_fast.kernels.matmul import INTERPRET, mma
from drcl_fast.kernels.offsets import index, wide
from drcl_fast.kernels.precision import dot_args
from drcl_fast.kernels.rounding import div_rn
from drcl_fast.ops import reference
from drcl_fast.ops.restructured import loss_custom_op, loss_terms, prepare
from drcl_fast.runtime import selfcheck

BLOCK_D = 128 if INTERPRET else 64
BLOCK_C = 32
# The pair kernel's (BLOCK, BLOCK_D, BLOCK_C, num_warps) per kind of product, from the compile matrix under
# Triton 3.9 and 3.6 (docs/kernel_resources.md): the largest tiles that compile, fit and stay within the
# spill budget on both. Tensor-core tiles depend on the arch: sm_90's wgmma holds 64 x 64 pair tiles in
# registers; sm_80's mma spills them, and Triton 3.6 cannot compile them for sm_100. The FMA products
# ("ieee": float32 under "fp32", and float64) hold their operand panels in registers, hence the short
# panels; none is narrower than 16, Triton 3.6's least dot width.
PAIR_CONFIGS = {
    ("tf32", "sm_90"): (64, 64, 16, 8), ("bf16", "sm_90"): (64, 64, 16, 8),
    ("tf32", "other"): (32, 64, 16, 4), ("bf16", "other"): (32, 64, 16, 4),
    ("ieee32", "any"): (64, 16, 16, 8), ("ieee64", "any"): (16, 32, 16, 2),
}
INTERPRET_PAIR_CONFIG = (128, 128, 32, None)   # the interpreter pays per program: fewer, larger tiles


@triton.jit
def _row_pair_chunk(ri, rj, i_ok, j_ok, k0, K, stride, BLOCK_K: tl.constexpr):
    """Offsets and masks of rows `ri` and of rows `rj` over columns [k0, k0 + BLOCK_K) of a row-major
    matrix with K columns: (off_i, off_j, m_i, m_j)."""
    rk = k0 + tl.arange(0, BLOCK_K)
    k_ok = rk[None, :] < K
    return ri[:, None] * stride + rk[None, :], rj[:, None] * stride + rk[None, :], i_ok[:, None] & k_ok, \
        j_ok[:, None] & k_ok


@triton.jit
def _tile_gram(a_ptr, b_ptr, ri, rj, i_ok, j_ok, K, stride, PRECISION: tl.constexpr, ACC: tl.constexpr,
               BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """A[ri] B[rj]^T (BLOCK x BLOCK, in ACC) for row-major A and B of K columns and one row stride."""
    acc = tl.zeros((BLOCK, BLOCK), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        off_i, off_j, m_i, m_j = _row_pair_chunk(ri, rj, i_ok, j_ok, k0, K, stride, BLOCK_K)
        acc = mma(tl.load(a_ptr + off_i, mask=m_i, other=0.0), tl.trans(tl.load(b_ptr + off_j, mask=m_j, other=0.0)),
                  acc, PRECISION)
    return acc


@triton.jit
def _pair_kernel(f_ptr, y_ptr, p_ptr, yk_ptr, nf_ptr, nr_ptr, partial_ptr, af_ptr, dnf_ptr, dp_ptr,
                 B, D, C, s_f, s_c, scale: tl.float64, eps: tl.float64, GRAD: tl.constexpr, PRECISION: tl.constexpr,
                 ACC: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    # float64 parameters (Python floats under the interpreter), rounded once to the kernel's type
    scale = tl.full((), scale, ACC)
    eps = tl.full((), eps, ACC)
    if pid_j >= pid_i:
        ri = index(pid_i * BLOCK + tl.arange(0, BLOCK), WIDE)   # int64 where F~ or the tile sums need it
        rj = index(pid_j * BLOCK + tl.arange(0, BLOCK), WIDE)
        i_ok = ri < B
        j_ok = rj < B
        nf_i = tl.load(nf_ptr + ri, mask=i_ok, other=0.0)
        nf_j = tl.load(nf_ptr + rj, mask=j_ok, other=0.0)
        nr_i = tl.load(nr_ptr + ri, mask=i_ok, other=0.0)
        nr_j = tl.load(nr_ptr + rj, mask=j_ok, other=0.0)
        valid = i_ok[:, None] & j_ok[None, :]
        mirrored = pid_i != pid_j
        weight = tl.where(mirrored, 2.0, 1.0)
        tile = (index(pid_i, WIDE) * tl.num_programs(1) + pid_j) * 2
        # Two phases, within then cross, each with its own tiles: the registers hold one
        # phase's BLOCK x BLOCK tiles at a time (both at once spill).

        # Within: w1 = cos2(r_i, r_j) - cos2(f_i, f_j); the clamp's gradient stops where it binds.
        gram = _tile_gram(f_ptr, f_ptr, ri, rj, i_ok, j_ok, D, s_f, PRECISION, ACC, BLOCK, BLOCK_D)
        g_rr = _tile_gram(yk_ptr, y_ptr, ri, rj, i_ok, j_ok, C, s_c, PRECISION, ACC, BLOCK, BLOCK_C)
        den_ff = nf_i[:, None] * nf_j[None, :]
        d_ff = tl.maximum(den_ff, eps)
        c_ff = div_rn(2.0 * gram, d_ff)
        w1 = tl.where(valid, div_rn(2.0 * g_rr, tl.maximum(nr_i[:, None] * nr_j[None, :], eps)) - c_ff, 0.0)
        tl.store(partial_ptr + tile, weight * tl.sum(tl.sum(w1 * w1, axis=1), axis=0))
        if GRAD:
            grad_gram = div_rn(w1 * (-8.0 * scale), d_ff)              # 2 dJ/dgram: both triangles
            grad_den = tl.where(den_ff >= eps, -0.5 * grad_gram * c_ff, 0.0)
            # A diagonal tile holds both triangles: its row sums already count each pair's two halves.
            dnf_i = tl.sum(grad_den * nf_j[None, :], axis=1)
            dnf_j = tl.where(mirrored, tl.sum(grad_den * nf_i[:, None], axis=0), 0.0)
            for d0 in range(0, D, BLOCK_D):
                off_i, off_j, m_i, m_j = _row_pair_chunk(ri, rj, i_ok, j_ok, d0, D, s_f, BLOCK_D)
                zero = tl.zeros((BLOCK, BLOCK_D), dtype=ACC)
                f_j = tl.load(f_ptr + off_j, mask=m_j, other=0.0)
                # Reductions: no ordering with other memory is needed, so the atomics are relaxed
                # (Triton's default, acq_rel, fences every one).
                tl.atomic_add(af_ptr + off_i, mma(grad_gram, f_j, zero, PRECISION), mask=m_i, sem="relaxed")
                if mirrored:
                    f_i = tl.load(f_ptr + off_i, mask=m_i, other=0.0)
                    tl.atomic_add(af_ptr + off_j, mma(tl.trans(grad_gram), f_i, zero, PRECISION), mask=m_j,
                                  sem="relaxed")

        # Cross: x = cos2(r_i, f_j), xt = cos2(r_j, f_i), w2 = x - xt.
        g_x = tl.zeros((BLOCK, BLOCK), dtype=ACC)
        g_xt = tl.zeros((BLOCK, BLOCK), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            off_i, off_j, m_i, m_j = _row_pair_chunk(ri, rj, i_ok, j_ok, c0, C, s_c, BLOCK_C)
            g_x = mma(tl.load(y_ptr + off_i, mask=m_i, other=0.0),
                      tl.trans(tl.load(p_ptr + off_j, mask=m_j, other=0.0)), g_x, PRECISION)
            g_xt = mma(tl.load(p_ptr + off_i, mask=m_i, other=0.0),
                       tl.trans(tl.load(y_ptr + off_j, mask=m_j, other=0.0)), g_xt, PRECISION)
        d_x = tl.maximum(nr_i[:, None] * nf_j[None, :], eps)
        d_xt = tl.maximum(nf_i[:, None] * nr_j[None, :], eps)
        x = div_rn(2.0 * g_x, d_x)
        xt = div_rn(2.0 * g_xt, d_xt)
        w2 = tl.where(valid, x - xt, 0.0)
        tl.store(partial_ptr + tile + 1, weight * tl.sum(tl.sum(w2 * w2, axis=1), axis=0))
        if GRAD:
            g = w2 * (4.0 * scale)                                     # dJ/dx; dJ/dxt = -g
            den_x_free = nr_i[:, None] * nf_j[None, :] >= eps
            dnf_j += tl.sum(tl.where(den_x_free, div_rn(-g * x, d_x), 0.0) * nr_i[:, None], axis=0)
            grad_x = div_rn(2.0 * g, d_x)
            if mirrored:
                den_xt_free = nf_i[:, None] * nr_j[None, :] >= eps
                dnf_i += tl.sum(tl.where(den_xt_free, div_rn(g * xt, d_xt), 0.0) * nr_j[None, :], axis=1)
            grad_xt = div_rn(-2.0 * g, d_xt)
            tl.atomic_add(dnf_ptr + ri, dnf_i, mask=i_ok, sem="relaxed")
            tl.atomic_add(dnf_ptr + rj, dnf_j, mask=j_ok, sem="relaxed")
            for c0 in range(0, C, BLOCK_C):
                off_i, off_j, m_i, m_j = _row_pair_chunk(ri, rj, i_ok, j_ok, c0, C, s_c, BLOCK_C)
                y_i = tl.load(y_ptr + off_i, mask=m_i, other=0.0)
                zero = tl.zeros((BLOCK, BLOCK_C), dtype=ACC)
                tl.atomic_add(dp_ptr + off_j, mma(tl.trans(grad_x), y_i, zero, PRECISION), mask=m_j, sem="relaxed")
                if mirrored:
                    y_j = tl.load(y_ptr + off_j, mask=m_j, other=0.0)
                    tl.atomic_add(dp_ptr + off_i, mma(grad_xt, y_j, zero, PRECISION), mask=m_i, sem="relaxed")


@triton.jit
def _mse_kernel(f_ptr, y_ptr, l_ptr, grad_ptr, partial_ptr, B, D, C, s_f, s_y, s_l, grad_scale: tl.float64,
                GRAD: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = index(tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B), WIDE)   # int64 where F~ needs it
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = rows < B
    d_ok = rd < D
    recast = tl.zeros((BLOCK_B, BLOCK_D), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        y = tl.load(y_ptr + rows[:, None] * s_y + rc[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
        lr = tl.load(l_ptr + rc[:, None] * s_l + rd[None, :], mask=c_ok[:, None] & d_ok[None, :], other=0.0)
        recast = mma(y, lr, recast, PRECISION)
    mask = r_ok[:, None] & d_ok[None, :]
    offsets = rows[:, None] * s_f + rd[None, :]
    diff = tl.load(f_ptr + offsets, mask=mask, other=0.0) - recast
    tl.store(partial_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1),
             tl.sum(tl.sum(diff * diff, axis=1), axis=0))
    if GRAD:
        tl.store(grad_ptr + offsets, tl.full((), grad_scale, ACC) * diff, mask=mask)


def pair_config(features: torch.Tensor, precision: str) -> tuple[int, int, int, int | None]:
    """The ``PAIR_CONFIGS`` entry for a launch on `features`' GPU at dot `precision`."""
    if INTERPRET:
        return INTERPRET_PAIR_CONFIG
    if precision == "ieee":
        return PAIR_CONFIGS[("ieee64" if features.dtype == torch.float64 else "ieee32", "any")]
    major, _ = torch.cuda.get_device_capability(features.device)
    return PAIR_CONFIGS[(precision, "sm_90" if major == 9 else "other")]


def pair_terms(features: torch.Tensor, targets: torch.Tensor, cs, need_grad: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """B^2 J_D, and AF, dnf, dP for :func:`assemble_feature_grad` (zeros without `need_grad`).

    `features` (B x D), `targets` and the C-space pieces `cs` (``restructured.prepare``) contiguous, of one
    dtype and device: the kernel reads every B x C tensor with the targets' row stride.
    """
    args = Args("pair_terms")
    args.tensor("features", features, "B D", layout=CONTIGUOUS)
    args.tensor("targets", targets, "B C", "features", layout=CONTIGUOUS)
    for name in ("nf", "nr"):
        args.tensor(f"cs.{name}", getattr(cs, name), "B", "features", layout=ROWS)
    for name in ("p", "yk"):
        args.tensor(f"cs.{name}", getattr(cs, name), "B C", "features", layout=CONTIGUOUS)
    (b, d), c = features.shape, targets.shape[1]
    kinds = dot_args(features.dtype)
    block, block_d, block_c, warps = pair_config(features, kinds["PRECISION"])
    extra = {} if warps is None else {"num_warps": warps}
    blocks = triton.cdiv(b, block)
    partial = features.new_zeros(blocks * blocks * 2)
    af, dnf, dp = torch.zeros_like(features), torch.zeros_like(cs.nf), torch.zeros_like(cs.p)
    _pair_kernel[(blocks, blocks)](
        features, targets, cs.p, cs.yk, cs.nf, cs.nr, partial, af, dnf, dp, b, d, c,
        features.stride(0), targets.stride(0), 1.0 / b ** 2, reference.COS_EPS, GRAD=need_grad,
        WIDE=wide(features, targets, partial), BLOCK=block, BLOCK_D=block_d, BLOCK_C=block_c, **kinds, **extra)
    return partial.sum(), af, dnf, dp


def mse(features: torch.Tensor, targets: torch.Tensor, pinv: torch.Tensor, need_grad: bool = True
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """J_MSE = mean (f~ - y~ L)^2 and its gradient, the recast rows formed in registers only.

    `features` (B x D) contiguous (its gradient is made like it and read with its row stride); `targets`
    (B x C) and `pinv` (C x D) with unit stride along their rows; one dtype and device.
    """
    args = Args("mse")
    args.tensor("features", features, "B D", layout=CONTIGUOUS)
    args.tensor("targets", targets, "B C", "features", layout=ROWS)
    args.tensor("pinv", pinv, "C D", "features", layout=ROWS)
    (b, d), c = features.shape, targets.shape[1]
    block_b = 32
    grid = (triton.cdiv(b, block_b), triton.cdiv(d, BLOCK_D))
    partial = features.new_empty(grid[0] * grid[1])
    grad = torch.empty_like(features) if need_grad else partial
    _mse_kernel[grid](features, targets, pinv, grad, partial, b, d, c,
                      features.stride(0), targets.stride(0), pinv.stride(0), 2.0 / (b * d),
                      GRAD=need_grad, WIDE=wide(features, targets), BLOCK_B=block_b, BLOCK_D=BLOCK_D,
                      BLOCK_C=BLOCK_C, **dot_args(features.dtype))
    return partial.sum() / (b * d), (grad if need_grad else None)


def assemble_feature_grad(features: torch.Tensor, pinv: torch.Tensor, nf: torch.Tensor,
                          af: torch.Tensor, dnf: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
    """dJ_D/dF~ = AF + (dnf / |f~|) f~ + dP L, written into `af`'s storage.

    A zero row has no direction: its norm's gradient is taken as 0, as torch's norm does. `features`,
    `af` (B x D), `pinv` (C x D), `nf`, `dnf` (B) and `dp` (B x C): one dtype and device.
    """
    args = Args("assemble_feature_grad")
    args.tensor("features", features, "B D")
    args.tensor("pinv", pinv, "C D", "features")
    args.tensor("nf", nf, "B", "features")
    args.tensor("af", af, "B D", "features")
    args.tensor("dnf", dnf, "B", "features")
    args.tensor("dp", dp, "B C", "features")
    scale = torch.where(nf > 0, dnf / nf.clamp_min(torch.finfo(nf.dtype).tiny), torch.zeros_like(nf))
    af.addcmul_(features, scale[:, None])
    return af.addmm_(dp, pinv)


class TritonEngine:
    """The ``LossEngine`` of the Triton backend."""

    def forward(self, features, targets, logits, pinv, q, need_grad=True):
        features, targets, pinv = features.contiguous(), targets.contiguous(), pinv.contiguous()
        cs = prepare(features, targets, pinv)
        j_d, af, dnf, dp = pair_terms(features, targets, cs, need_grad)
        j_l, d_logits = gce_forward(logits, targets, q)
        j_mse, d_mse = mse(features, targets, pinv, need_grad)
        terms = torch.stack([j_l, j_d / features.shape[0] ** 2, j_mse])
        if not need_grad:
            return terms, None, None, None
        return terms, assemble_feature_grad(features, pinv, cs.nf, af, dnf, dp), d_mse, d_logits


ENGINE = TritonEngine()


def drcl_loss_terms(features: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                    pinv: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J_L, J_D, J_MSE), as ``reference.drcl_loss_terms``; gradients reach features and logits.

    `features` (B x D), `targets`, `logits` (B x C) and `pinv` (C x D): float32 or float64, one dtype and
    device, any strides.
    """
    args = Args("drcl_loss_terms")
    args.tensor("features", features, "B D")
    args.tensor("targets", targets, "B C", "features")
    args.tensor("logits", logits, "B C", "features")
    args.tensor("pinv", pinv, "C D", "features")
    return loss_terms(ENGINE, features, targets, logits, pinv, q)


# What dispatch hands out: the Function eagerly, the custom op while torch.compile traces.
entry = custom_op.eager_or_compiled(drcl_loss_terms, loss_custom_op("triton", ENGINE))


def _probe(device: torch.device):
    """The self-check: `entry` against the float64 reference, the three terms and both gradients."""
    g = torch.Generator().manual_seed(102)
    b, d, c = 7, 5, 3
    features, targets = probe_inputs.dyadic(g, b, d), probe_inputs.soft_targets(g, b, c)
    logits, pinv = probe_inputs.dyadic(g, b, c), probe_inputs.dyadic(g, c, d)
    weights = (1.0, 0.5, 0.25)
    fast, ref = {}, {}
    for out, impl, double in ((fast, entry, False), (ref, reference.drcl_loss_terms, True)):
        dtype = torch.float64 if double else torch.float32
        f, lg = probe_inputs.leaves(device, features, logits, double=double)
        y, p = targets.to(device, dtype), pinv.to(device, dtype)
        terms = impl(f, y, lg, p, 0.5)
        out["J_L"], out["J_D"], out["J_MSE"] = terms
        total = sum(w * t for w, t in zip(weights, terms))
        out["gradient of the features"], out["gradient of the logits"] = torch.autograd.grad(total, (f, lg))
        with torch.no_grad():   # validation's forward without gradients compiles apart
            out["J_D without gradients"] = impl(f.detach(), y, lg.detach(), p, 0.5)[1]
    return fast, ref, probe_inputs.matmul_tolerance()


selfcheck.register("drcl_loss", _probe)
