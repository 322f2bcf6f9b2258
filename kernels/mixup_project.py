"""The encoder's tail as one fused stage: last linear -> unit rows -> Mixup -> project by W.

Forward, two kernels:
1. ``z = h W_head^T`` (the GEMM of ``matmul.py``) whose epilogue adds each tile's
   row sums of squares into a vector, so the norms need no pass over z;
2. one pass over z per row block: ``f~_i = gamma z_i / |z_i| + (1 - gamma) z_pi(i) / |z_pi(i)|``,
   written once, and the logits ``f~ W`` accumulated from the same registers.

Backward, one pass plus the GEMMs: with ``u = dF~ + dlogits W^T`` (the projection's
gradient added in registers), ``df_i = gamma u_i + (1 - gamma) u_pi^-1(i)`` and
``dz_i = (df_i - f_i (f_i . df_i)) / |z_i|``; then ``dh = dz W_head`` and ``dW_head = dz^T h``.
The normalised f is never stored: it is z times the inverse norm, recomputed in registers.
W is the frozen prior: it gets no gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from drcl_fast.kernels.matmul import matmul, mma
from drcl_fast.kernels.precision import dot_precision

BLOCK_D = 64


@triton.jit
def _mix_project_fwd(z_ptr, sq_ptr, perm_ptr, w_ptr, mixed_ptr, logits_ptr, B, D, C, gamma,
                     s_z, s_w, s_m, s_l, PRECISION: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    r_ok = rows < B
    partner = tl.load(perm_ptr + rows, mask=r_ok, other=0)
    a_i = gamma / tl.sqrt(tl.load(sq_ptr + rows, mask=r_ok, other=1.0))
    a_j = (1.0 - gamma) / tl.sqrt(tl.load(sq_ptr + partner, mask=r_ok, other=1.0))
    rc = tl.arange(0, BLOCK_C)
    c_ok = rc < C
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        d_ok = rd < D
        mask = r_ok[:, None] & d_ok[None, :]
        z_i = tl.load(z_ptr + rows[:, None] * s_z + rd[None, :], mask=mask, other=0.0)
        z_j = tl.load(z_ptr + partner[:, None] * s_z + rd[None, :], mask=mask, other=0.0)
        mixed = a_i[:, None] * z_i + a_j[:, None] * z_j
        tl.store(mixed_ptr + rows[:, None] * s_m + rd[None, :], mixed, mask=mask)
        w = tl.load(w_ptr + rd[:, None] * s_w + rc[None, :], mask=d_ok[:, None] & c_ok[None, :], other=0.0)
        acc = mma(mixed, w, acc, PRECISION)
    tl.store(logits_ptr + rows[:, None] * s_l + rc[None, :], acc, mask=r_ok[:, None] & c_ok[None, :])


@triton.jit
def _feature_grad_chunk(dm_ptr, z_ptr, w_ptr, rows, inv_rows, r_ok, rc, c_ok, d0, D, dl_mix, gamma,
                        s_dm, s_z, s_w, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr):
    """For the D chunk at d0: (df, z, its columns, its mask), with df = gamma dF~_i + (1 - gamma)
    dF~_pi^-1(i) + (mixed dlogits) W^T and z the normalised rows."""
    rd = d0 + tl.arange(0, BLOCK_D)
    d_ok = rd < D
    mask = r_ok[:, None] & d_ok[None, :]
    w_t = tl.load(w_ptr + rd[None, :] * s_w + rc[:, None], mask=d_ok[None, :] & c_ok[:, None], other=0.0)
    dm_i = tl.load(dm_ptr + rows[:, None] * s_dm + rd[None, :], mask=mask, other=0.0)
    dm_j = tl.load(dm_ptr + inv_rows[:, None] * s_dm + rd[None, :], mask=mask, other=0.0)
    df = mma(dl_mix, w_t, gamma * dm_i + (1.0 - gamma) * dm_j, PRECISION)
    z = tl.load(z_ptr + rows[:, None] * s_z + rd[None, :], mask=mask, other=0.0)
    return df, z, rd, mask


@triton.jit
def _mix_project_bwd(dm_ptr, dl_ptr, z_ptr, sq_ptr, inv_perm_ptr, w_ptr, dz_ptr, B, D, C, gamma,
                     s_dm, s_dl, s_z, s_w, s_dz, PRECISION: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    r_ok = rows < B
    inv_rows = tl.load(inv_perm_ptr + rows, mask=r_ok, other=0)
    inv_norm = 1.0 / tl.sqrt(tl.load(sq_ptr + rows, mask=r_ok, other=1.0))
    rc = tl.arange(0, BLOCK_C)
    c_ok = rc < C
    l_mask = r_ok[:, None] & c_ok[None, :]
    dl_i = tl.load(dl_ptr + rows[:, None] * s_dl + rc[None, :], mask=l_mask, other=0.0)
    dl_j = tl.load(dl_ptr + inv_rows[:, None] * s_dl + rc[None, :], mask=l_mask, other=0.0)
    dl_mix = (gamma * dl_i + (1.0 - gamma) * dl_j).to(ACC)
    # Pass 1: f_i . df_i over the whole row; pass 2: dz = (df - f (f . df)) / |z|.
    dot = tl.zeros((BLOCK_B,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        df, z, rd, mask = _feature_grad_chunk(dm_ptr, z_ptr, w_ptr, rows, inv_rows, r_ok, rc, c_ok, d0, D, dl_mix,
                                              gamma, s_dm, s_z, s_w, PRECISION, BLOCK_D)
        dot += tl.sum(z * df, axis=1)
    dot = dot * inv_norm
    for d0 in range(0, D, BLOCK_D):
        df, z, rd, mask = _feature_grad_chunk(dm_ptr, z_ptr, w_ptr, rows, inv_rows, r_ok, rc, c_ok, d0, D, dl_mix,
                                              gamma, s_dm, s_z, s_w, PRECISION, BLOCK_D)
        dz = (df - z * (inv_norm * dot)[:, None]) * inv_norm[:, None]
        tl.store(dz_ptr + rows[:, None] * s_dz + rd[None, :], dz, mask=mask)


def _blocks(c: int) -> tuple[int, int]:
    """(rows per program, padded C): tl.dot needs 16 at least; wide C takes fewer rows."""
    block_c = max(16, triton.next_power_of_2(c))
    return (32 if block_c <= 128 else 16), block_c


def _dtypes(t: torch.Tensor) -> dict:
    wide = t.dtype == torch.float64
    return {"PRECISION": dot_precision(wide), "ACC": tl.float64 if wide else tl.float32}


def mixup_project_forward(hidden: torch.Tensor, head_weight: torch.Tensor, permutation: torch.Tensor,
                          gamma: float, prior: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f~, logits, z, row sums of squares of z)."""
    b, (d, c) = hidden.shape[0], prior.shape
    sq = torch.zeros(b, device=hidden.device, dtype=hidden.dtype)
    z = matmul(hidden, head_weight.t(), row_sq=sq)
    mixed = torch.empty_like(z)
    logits = torch.empty((b, c), device=z.device, dtype=z.dtype)
    block_b, block_c = _blocks(c)
    prior = prior.contiguous()
    _mix_project_fwd[(triton.cdiv(b, block_b),)](
        z, sq, permutation, prior, mixed, logits, b, d, c, gamma,
        z.stride(0), prior.stride(0), mixed.stride(0), logits.stride(0),
        BLOCK_B=block_b, BLOCK_D=BLOCK_D, BLOCK_C=block_c, **_dtypes(z))
    return mixed, logits, z, sq


def mixup_project_backward(d_mixed: torch.Tensor, d_logits: torch.Tensor, hidden: torch.Tensor,
                           head_weight: torch.Tensor, z: torch.Tensor, sq: torch.Tensor,
                           permutation: torch.Tensor, gamma: float, prior: torch.Tensor, need_dh: bool
                           ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(dh or None, dW_head) from the gradients of f~ and of the logits."""
    (b, d), c = z.shape, prior.shape[1]
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(b, device=permutation.device, dtype=permutation.dtype)
    d_mixed, d_logits, prior = d_mixed.contiguous(), d_logits.contiguous(), prior.contiguous()
    dz = torch.empty_like(z)
    block_b, block_c = _blocks(c)
    _mix_project_bwd[(triton.cdiv(b, block_b),)](
        d_mixed, d_logits, z, sq, inverse, prior, dz, b, d, c, gamma,
        d_mixed.stride(0), d_logits.stride(0), z.stride(0), prior.stride(0), dz.stride(0),
        BLOCK_B=block_b, BLOCK_D=BLOCK_D, BLOCK_C=block_c, **_dtypes(z))
    dh = matmul(dz, head_weight) if need_dh else None
    return dh, matmul(dz.t(), hidden)


class MixupProject(torch.autograd.Function):
    """(f~, f~ W) from the last hidden layer; gradients for the hidden layer and W_head."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, head_weight: torch.Tensor, permutation: torch.Tensor,
                gamma: float, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, logits, z, sq = mixup_project_forward(hidden, head_weight, permutation, gamma, prior)
        ctx.gamma = gamma
        ctx.save_for_backward(hidden, head_weight, z, sq, permutation, prior)
        return mixed, logits

    @staticmethod
    def backward(ctx, d_mixed: torch.Tensor | None, d_logits: torch.Tensor | None):
        hidden, head_weight, z, sq, permutation, prior = ctx.saved_tensors
        d_mixed = torch.zeros_like(z) if d_mixed is None else d_mixed
        d_logits = z.new_zeros(z.shape[0], prior.shape[1]) if d_logits is None else d_logits
        dh, dw = mixup_project_backward(d_mixed, d_logits, hidden, head_weight, z, sq, permutation,
                                        ctx.gamma, prior, ctx.needs_input_grad[0])
        return dh, dw, None, None, None
