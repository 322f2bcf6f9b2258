"""One Triton GEMM with the prologue and epilogues the encoder's layers need.

``C = gate(A) @ B (+ bias) (ReLU)``, optionally summing each row's squares of C
into a vector (the L2 norm the encoder's last layer needs next, without another
pass over C). ``gate(A)`` zeroes A where a same-shaped tensor is <= 0: the ReLU's
backward applied while A is loaded, so the masked gradient never exists in memory.
Any strides: the transposed operands of the backward passes are views, not copies.

On a GPU the block shapes are autotuned per (M, N, K); under the Triton
interpreter (CI on CPUs) one fixed configuration runs, since the interpreter
cannot autotune.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from drcl_fast.kernels.precision import dot_precision

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b at the chosen precision ("bf16" rounds the operands, accumulates in float32)."""
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, gate_ptr, sq_ptr, M, N, K,
                   s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                   HAS_BIAS: tl.constexpr, RELU: tl.constexpr, GATED: tl.constexpr, ROW_SQ: tl.constexpr,
                   PRECISION: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row blocks share each column block while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_rows
    pid_n = (pid % in_group) // group_rows

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a_mask = m_ok[:, None] & (kk[None, :] < K)
        a_off = rm[:, None] * s_am + kk[None, :] * s_ak
        a = tl.load(a_ptr + a_off, mask=a_mask, other=0.0)
        if GATED:   # the gate shares A's shape and strides
            a = tl.where(tl.load(gate_ptr + a_off, mask=a_mask, other=0.0) > 0, a, 0.0)
        b = tl.load(b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=(kk[:, None] < K) & n_ok[None, :], other=0.0)
        acc = mma(a, b, acc, PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if ROW_SQ:   # padded columns hold zeros, so they add nothing
        tl.atomic_add(sq_ptr + rm, tl.sum(acc * acc, axis=1), mask=m_ok)
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn, acc, mask=m_ok[:, None] & n_ok[None, :])


def _gpu_configs() -> list[triton.Config]:
    shapes = [(128, 128, 32, 4, 4), (128, 256, 32, 8, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4),
              (128, 128, 64, 8, 3), (64, 64, 64, 4, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


if INTERPRET:
    _launch = _matmul_kernel
    _FIXED = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}
else:
    _launch = triton.autotune(_gpu_configs(), key=["M", "N", "K", "GATED", "PRECISION"],
                              reset_to_zero=["sq_ptr"])(_matmul_kernel)
    _FIXED = {}


def matmul(a: torch.Tensor, b: torch.Tensor, *, bias: torch.Tensor | None = None, relu: bool = False,
           gate: torch.Tensor | None = None, row_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``gate(a) @ b (+ bias) (ReLU)`` as a new contiguous tensor; ``row_sq`` (M) gains each row's sum of squares.

    ``gate``, when given, has a's shape and strides; a is read as 0 where gate <= 0.
    """
    (m, k), n = a.shape, b.shape[1]
    if gate is not None and gate.stride() != a.stride():
        raise ValueError("gate must have the strides of a")
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)
    dummy = c   # stands in for absent optional pointers; never read
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    _launch[grid](a, b, c, dummy if bias is None else bias, dummy if gate is None else gate,
                  dummy if row_sq is None else row_sq, m, n, k,
                  a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                  HAS_BIAS=bias is not None, RELU=relu, GATED=gate is not None, ROW_SQ=row_sq is not None,
                  PRECISION=dot_precision(a.dtype == torch.float64),
                  ACC=tl.float64 if a.dtype == torch.float64 else tl.float32, **_FIXED)
    return c
