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

Any number of classes: they go in chunks of at most CHUNK_C, so a program's share of the prior
in shared memory does not grow with C (a whole padded class tile does not fit past a few hundred
classes). The forward runs one program per (row block, class chunk), each mixing its rows over D
for its chunk's logits (the first chunk's programs also write f~; with one chunk this is the fused
pass above); the backward sums ``dlogits W^T`` over the chunks within each D chunk.
gamma is a float64 parameter and the norms use IEEE division and square root (``rounding.py``).
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from drcl_fast.kernels import custom_op, probe_inputs
from drcl_fast.kernels.boundary import CONTIGUOUS, INDICES, ROWS, Args
from drcl_fast.kernels.matmul import matmul, mma
from drcl_fast.kernels.offsets import index, wide
from drcl_fast.kernels.precision import dot_args
from drcl_fast.kernels.rounding import div_rn, sqrt_rn
from drcl_fast.runtime import selfcheck

BLOCK_D = 64
CHUNK_C = 32   # classes per chunk: the forward's grid has one program per (row block, class chunk)


@triton.jit
def _mix_weights(gamma, ACC: tl.constexpr):
    """(gamma, 1 - gamma) in ACC. gamma is a float64 parameter (a Python float under the
    interpreter, which tl.full takes either way): 1 - gamma is formed before the rounding to ACC."""
    g = tl.full((), gamma, tl.float64)
    return g.to(ACC), (1.0 - g).to(ACC)


@triton.jit
def _mix_project_fwd(z_ptr, sq_ptr, perm_ptr, w_ptr, mixed_ptr, logits_ptr, B, D, C, gamma: tl.float64,
                     s_z, s_w, s_m, s_l, PRECISION: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows of block program_id(0) against the classes of chunk program_id(1): each chunk's program
    forms the mixed rows over D for its logits; the first chunk's also writes them."""
    rows = index(tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B), WIDE)   # int64 where z needs it
    chunk = tl.program_id(1)
    r_ok = rows < B
    partner = index(tl.load(perm_ptr + rows, mask=r_ok, other=0), WIDE)
    g_i, g_j = _mix_weights(gamma, ACC)
    a_i = div_rn(g_i, sqrt_rn(tl.load(sq_ptr + rows, mask=r_ok, other=1.0)))
    a_j = div_rn(g_j, sqrt_rn(tl.load(sq_ptr + partner, mask=r_ok, other=1.0)))
    rc = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = rc < C
    writes = rows < tl.where(chunk == 0, B, 0)   # only the first chunk's programs write f~
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        d_ok = rd < D
        mask = r_ok[:, None] & d_ok[None, :]
        z_i = tl.load(z_ptr + rows[:, None] * s_z + rd[None, :], mask=mask, other=0.0)
        z_j = tl.load(z_ptr + partner[:, None] * s_z + rd[None, :], mask=mask, other=0.0)
        mixed = a_i[:, None] * z_i + a_j[:, None] * z_j
        tl.store(mixed_ptr + rows[:, None] * s_m + rd[None, :], mixed, mask=writes[:, None] & d_ok[None, :])
        w = tl.load(w_ptr + rd[:, None] * s_w + rc[None, :], mask=d_ok[:, None] & c_ok[None, :], other=0.0)
        acc = mma(mixed, w, acc, PRECISION)
    tl.store(logits_ptr + rows[:, None] * s_l + rc[None, :], acc, mask=r_ok[:, None] & c_ok[None, :])


@triton.jit
def _mixed_logit_grad(dl_ptr, rows, inv_rows, r_ok, rc, C, g_i, g_j, s_dl):
    """gamma dlogits_i + (1 - gamma) dlogits_pi^-1(i) for the classes rc."""
    l_mask = r_ok[:, None] & (rc < C)[None, :]
    dl_i = tl.load(dl_ptr + rows[:, None] * s_dl + rc[None, :], mask=l_mask, other=0.0)
    dl_j = tl.load(dl_ptr + inv_rows[:, None] * s_dl + rc[None, :], mask=l_mask, other=0.0)
    return g_i * dl_i + g_j * dl_j


@triton.jit
def _feature_grad_chunk(dm_ptr, dl_ptr, z_ptr, w_ptr, rows, inv_rows, r_ok, d0, D, C, g_i, g_j, dl_mix,
                        s_dm, s_dl, s_z, s_w, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_C: tl.constexpr, ONE_CHUNK: tl.constexpr):
    """For the D chunk at d0: (df, z, its columns, its mask), with df = gamma dF~_i + (1 - gamma)
    dF~_pi^-1(i) + (mixed dlogits) W^T and z the normalised rows. With one class chunk the mixed
    dlogits (`dl_mix`) come formed; else they are loaded chunk by chunk and their products summed."""
    rd = d0 + tl.arange(0, BLOCK_D)
    d_ok = rd < D
    mask = r_ok[:, None] & d_ok[None, :]
    dm_i = tl.load(dm_ptr + rows[:, None] * s_dm + rd[None, :], mask=mask, other=0.0)
    dm_j = tl.load(dm_ptr + inv_rows[:, None] * s_dm + rd[None, :], mask=mask, other=0.0)
    df = g_i * dm_i + g_j * dm_j
    if ONE_CHUNK:
        rc = tl.arange(0, BLOCK_C)
        w_t = tl.load(w_ptr + rd[None, :] * s_w + rc[:, None], mask=d_ok[None, :] & (rc < C)[:, None], other=0.0)
        df = mma(dl_mix, w_t, df, PRECISION)
    else:
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            w_t = tl.load(w_ptr + rd[None, :] * s_w + rc[:, None], mask=d_ok[None, :] & (rc < C)[:, None],
                          other=0.0)
            df = mma(_mixed_logit_grad(dl_ptr, rows, inv_rows, r_ok, rc, C, g_i, g_j, s_dl), w_t, df, PRECISION)
    z = tl.load(z_ptr + rows[:, None] * s_z + rd[None, :], mask=mask, other=0.0)
    return df, z, rd, mask


@triton.jit
def _mix_project_bwd(dm_ptr, dl_ptr, z_ptr, sq_ptr, inv_perm_ptr, w_ptr, dz_ptr, B, D, C, gamma: tl.float64,
                     s_dm, s_dl, s_z, s_w, s_dz, PRECISION: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                     ONE_CHUNK: tl.constexpr):
    rows = index(tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B), WIDE)   # int64 where z needs it
    r_ok = rows < B
    inv_rows = index(tl.load(inv_perm_ptr + rows, mask=r_ok, other=0), WIDE)
    inv_norm = div_rn(1.0, sqrt_rn(tl.load(sq_ptr + rows, mask=r_ok, other=1.0)))
    g_i, g_j = _mix_weights(gamma, ACC)
    if ONE_CHUNK:   # C <= BLOCK_C: the mixed dlogits once, kept in registers for every D chunk
        dl_mix = _mixed_logit_grad(dl_ptr, rows, inv_rows, r_ok, tl.arange(0, BLOCK_C), C, g_i, g_j, s_dl)
    else:
        dl_mix = g_i   # unused: each D chunk sums over the class chunks
    # Pass 1: f_i . df_i over the whole row; pass 2: dz = (df - f (f . df)) / |z|.
    dot = tl.zeros((BLOCK_B,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        df, z, rd, mask = _feature_grad_chunk(dm_ptr, dl_ptr, z_ptr, w_ptr, rows, inv_rows, r_ok, d0, D, C, g_i, g_j,
                                              dl_mix, s_dm, s_dl, s_z, s_w, PRECISION, BLOCK_D, BLOCK_C, ONE_CHUNK)
        dot += tl.sum(z * df, axis=1)
    dot = dot * inv_norm
    for d0 in range(0, D, BLOCK_D):
        df, z, rd, mask = _feature_grad_chunk(dm_ptr, dl_ptr, z_ptr, w_ptr, rows, inv_rows, r_ok, d0, D, C, g_i, g_j,
                                              dl_mix, s_dm, s_dl, s_z, s_w, PRECISION, BLOCK_D, BLOCK_C, ONE_CHUNK)
        dz = (df - z * (inv_norm * dot)[:, None]) * inv_norm[:, None]
        tl.store(dz_ptr + rows[:, None] * s_dz + rd[None, :], dz, mask=mask)


def _blocks(c: int) -> tuple[int, int]:
    """(rows per program, classes per chunk): tl.dot needs 16 at least; C > CHUNK_C runs in chunks."""
    return 32, min(CHUNK_C, max(16, triton.next_power_of_2(c)))


def mixup_project_forward(hidden: torch.Tensor, head_weight: torch.Tensor, permutation: torch.Tensor,
                          gamma: float, prior: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f~, logits, z, row sums of squares of z).

    `hidden` (B x H), `head_weight` (D x H) and `prior` (D x C) of one float dtype, any strides;
    `permutation` (B) int32 or int64 with unit stride; one device.
    """
    args = Args("mixup_project_forward")
    args.tensor("hidden", hidden, "B H")
    args.tensor("head_weight", head_weight, "D H", "hidden")
    args.tensor("permutation", permutation, "B", INDICES, layout=ROWS)
    args.tensor("prior", prior, "D C", "hidden")
    b, (d, c) = hidden.shape[0], prior.shape
    sq = torch.zeros(b, device=hidden.device, dtype=hidden.dtype)
    z = matmul(hidden, head_weight.t(), row_sq=sq)
    mixed = torch.empty_like(z)
    logits = torch.empty((b, c), device=z.device, dtype=z.dtype)
    block_b, block_c = _blocks(c)
    prior = prior.contiguous()
    _mix_project_fwd[(triton.cdiv(b, block_b), triton.cdiv(c, block_c))](
        z, sq, permutation, prior, mixed, logits, b, d, c, float(gamma),
        z.stride(0), prior.stride(0), mixed.stride(0), logits.stride(0), WIDE=wide(z, logits),
        BLOCK_B=block_b, BLOCK_D=BLOCK_D, BLOCK_C=block_c, **dot_args(z.dtype))
    return mixed, logits, z, sq


def mixup_project_backward(d_mixed: torch.Tensor, d_logits: torch.Tensor, hidden: torch.Tensor,
                           head_weight: torch.Tensor, z: torch.Tensor, sq: torch.Tensor,
                           permutation: torch.Tensor, gamma: float, prior: torch.Tensor, need_dh: bool
                           ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(dh or None, dW_head) from the gradients of f~ and of the logits.

    `d_mixed`, `z` (B x D), `d_logits` (B x C), `hidden` (B x H), `head_weight` (D x H), `sq` (B) and
    `prior` (D x C) of one float dtype, `permutation` (B) int32 or int64, one device; `z` contiguous
    (its gradient is made like it and both are read with z's row stride), `sq` with unit stride.
    """
    args = Args("mixup_project_backward")
    args.tensor("d_mixed", d_mixed, "B D")
    args.tensor("d_logits", d_logits, "B C", "d_mixed")
    args.tensor("hidden", hidden, "B H", "d_mixed")
    args.tensor("head_weight", head_weight, "D H", "d_mixed")
    args.tensor("z", z, "B D", "d_mixed", layout=CONTIGUOUS)
    args.tensor("sq", sq, "B", "d_mixed", layout=ROWS)
    args.tensor("permutation", permutation, "B", INDICES)
    args.tensor("prior", prior, "D C", "d_mixed")
    (b, d), c = z.shape, prior.shape[1]
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(b, device=permutation.device, dtype=permutation.dtype)
    d_mixed, d_logits, prior = d_mixed.contiguous(), d_logits.contiguous(), prior.contiguous()
    dz = torch.empty_like(z)
    block_b, block_c = _blocks(c)
    _mix_project_bwd[(triton.cdiv(b, block_b),)](
        d_mixed, d_logits, z, sq, inverse, prior, dz, b, d, c, float(gamma),
        d_mixed.stride(0), d_logits.stride(0), z.stride(0), prior.stride(0), dz.stride(0),
        WIDE=wide(d_mixed, d_logits, z), BLOCK_B=block_b, BLOCK_D=BLOCK_D, BLOCK_C=block_c, ONE_CHUNK=c <= block_c,
        **dot_args(z.dtype),
        num_warps=4 if c <= block_c else 8)   # the chunk loop spills at 4 warps
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


def _custom_op() -> Callable | None:
    """The stage as the custom ops ``drcl_fast::mixup_project`` and ``mixup_project_backward``
    (``custom_op.py``); None where torch has none."""
    if not custom_op.AVAILABLE:
        return None

    @torch.library.custom_op("drcl_fast::mixup_project", mutates_args=())
    def forward(hidden: Tensor, head_weight: Tensor, permutation: Tensor, gamma: float, prior: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return mixup_project_forward(hidden, head_weight, permutation, gamma, prior)

    @forward.register_fake
    def _(hidden, head_weight, permutation, gamma, prior):
        b, d = hidden.shape[0], head_weight.shape[0]
        return (hidden.new_empty(b, d), hidden.new_empty(b, prior.shape[1]), hidden.new_empty(b, d),
                hidden.new_empty(b))

    @torch.library.custom_op("drcl_fast::mixup_project_backward", mutates_args=())
    def backward_op(d_mixed: Tensor, d_logits: Tensor, hidden: Tensor, head_weight: Tensor, z: Tensor,
                    sq: Tensor, permutation: Tensor, gamma: float, prior: Tensor, need_dh: bool
                    ) -> tuple[Tensor, Tensor]:
        dh, dw = mixup_project_backward(d_mixed, d_logits, hidden, head_weight, z, sq, permutation, gamma,
                                        prior, need_dh)
        return (hidden.new_empty(0) if dh is None else dh), dw

    @backward_op.register_fake
    def _(d_mixed, d_logits, hidden, head_weight, z, sq, permutation, gamma, prior, need_dh):
        return (torch.empty_like(hidden) if need_dh else hidden.new_empty(0)), torch.empty_like(head_weight)

    def setup(ctx, inputs, output):
        hidden, head_weight, permutation, ctx.gamma, prior = inputs
        _, _, z, sq = output
        ctx.mark_non_differentiable(z, sq)
        ctx.save_for_backward(hidden, head_weight, z, sq, permutation, prior)

    def backward(ctx, d_mixed, d_logits, _dz, _dsq):
        hidden, head_weight, z, sq, permutation, prior = ctx.saved_tensors
        d_mixed = torch.zeros_like(z) if d_mixed is None else d_mixed
        d_logits = z.new_zeros(z.shape[0], prior.shape[1]) if d_logits is None else d_logits
        need_dh = ctx.needs_input_grad[0]
        dh, dw = backward_op(d_mixed, d_logits, hidden, head_weight, z, sq, permutation, ctx.gamma, prior, need_dh)
        return (dh if need_dh else None), dw, None, None, None

    forward.register_autograd(backward, setup_context=setup)
    return lambda hidden, head_weight, permutation, gamma, prior: \
        forward(hidden, head_weight, permutation, float(gamma), prior)[:2]


# What dispatch hands out: the Function eagerly, the custom op while torch.compile traces.
entry = custom_op.eager_or_compiled(MixupProject.apply, _custom_op())


def _probe(device: torch.device):
    """The self-check: `entry` against the float64 reference, both outputs and both gradients."""
    from drcl_fast.ops import reference   # on use: drcl_fast.ops imports this module
    g = torch.Generator().manual_seed(104)
    b, h, d, c = 5, 9, 7, 3
    hidden, head, prior, d_mixed, d_logits = (probe_inputs.dyadic(g, *shape)
                                              for shape in ((b, h), (d, h), (d, c), (b, d), (b, c)))
    permutation = torch.randperm(b, generator=g).to(device)
    fast, ref = {}, {}
    for out, impl, double in ((fast, entry, False), (ref, reference.mixup_project, True)):
        dtype = torch.float64 if double else torch.float32
        leaves = probe_inputs.leaves(device, hidden, head, double=double)
        mixed, logits = impl(*leaves, permutation, 0.75, prior.to(device, dtype))
        out["mixed features"], out["logits"] = mixed, logits
        out["d hidden"], out["d head weight"] = torch.autograd.grad(
            (mixed, logits), leaves, (d_mixed.to(device, dtype), d_logits.to(device, dtype)))
    return fast, ref, probe_inputs.matmul_tolerance()


selfcheck.register("mixup_project", _probe)
