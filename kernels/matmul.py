"""One Triton GEMM with the prologue and epilogues the encoder's layers need.

``C = gate(A) @ B (+ bias) (ReLU)``, optionally adding each row's sum of squares of C
into a vector (the L2 norm the encoder's last layer needs next, without another
pass over C). ``gate(A)`` zeroes A where a same-shaped tensor is <= 0: the ReLU's
backward applied while A is loaded, so the masked gradient never exists in memory.
Any strides: the transposed operands of the backward passes are views, not copies.

On a GPU the block shapes are autotuned per (M, N, K, epilogue flags, precision,
dtype, operand layout) among the configurations meant for the operands' kind
(``CONFIGS``: tensor-core float32, strict float32 on the FMA units, float64), after
dropping those whose shared memory (``smem_estimate``) exceeds the device's, so no
configuration that cannot launch is ever benchmarked. Under the Triton interpreter
(CI on CPUs) one fixed configuration runs, since the interpreter cannot autotune.
"""
from __future__ import annotations

import functools
import os
import threading

import torch
import triton
import triton.language as tl

from drcl_fast.kernels.boundary import ROWS, Args
from drcl_fast.kernels.offsets import index, wide
from drcl_fast.kernels.precision import dot_args

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin), by compute capability.
# At run time the prune reads the running device's own figure; these are for AOT checks (tests, bench tools).
ARCH_SMEM = {80: 166_912, 90: 232_448}


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b at the chosen precision ("bf16" rounds the operands, accumulates in float32)."""
    # out_dtype follows the accumulator: older Triton (3.6) refuses a float64 dot that leaves it float32.
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc, out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, gate_ptr, sq_ptr, M, N, K,
                   s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                   HAS_BIAS: tl.constexpr, RELU: tl.constexpr, GATED: tl.constexpr, ROW_SQ: tl.constexpr,
                   PRECISION: tl.constexpr, ACC: tl.constexpr,
                   A_K_CONTIG: tl.constexpr, B_N_CONTIG: tl.constexpr,   # layout, for the autotune key only
                   WIDE: tl.constexpr,
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

    rm = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), WIDE)   # int64 where A, B or C needs it (offsets.py)
    rn = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), WIDE)
    rk = index(tl.arange(0, BLOCK_K), WIDE)
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
    if ROW_SQ:   # padded columns hold zeros, so they add nothing; a sum needs no ordering
        tl.atomic_add(sq_ptr + rm, tl.sum(acc * acc, axis=1), mask=m_ok, sem="relaxed")
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn, acc, mask=m_ok[:, None] & n_ok[None, :])


# ---- configurations, their shared memory, and the prune --------------------------------------------------------

def _cfg(m: int, n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=warps, num_stages=stages)


# Per kind of operands, best guess first. Each was compiled for sm_80 and sm_90 at every call site (forward with
# bias+ReLU, row sums of squares, both gated backward GEMMs, the tail's two plain ones): none spills on sm_90
# (tests/kernels/test_matmul_configs.py; docs/kernels.md has the table). The last of each list fits 99 KB (sm_86/89)
# by the estimate.
CONFIGS = {
    # float32 on the tensor cores, "tf32" and "bf16"
    "tc": [_cfg(128, 256, 32, 8, 3), _cfg(128, 128, 64, 8, 3), _cfg(128, 128, 32, 8, 4), _cfg(64, 128, 32, 4, 4),
           _cfg(128, 64, 32, 4, 4), _cfg(64, 64, 64, 4, 3)],
    # strict float32 ("ieee"): FMA units. A long BLOCK_K spills (on sm_80 64x64x64: 0.9 KB a thread, 128x128x64:
    # 7.5 KB); 16 keeps even 128x128 tiles spill-free
    "fma": [_cfg(128, 128, 16, 8, 3), _cfg(64, 128, 16, 8, 3), _cfg(128, 64, 16, 8, 3), _cfg(64, 64, 16, 4, 3)],
    # float64 (DMMA tensor cores on sm_80+): 8-byte tiles, so short ones
    "fp64": [_cfg(64, 64, 32, 4, 3), _cfg(64, 64, 16, 4, 4), _cfg(32, 64, 32, 4, 3), _cfg(64, 32, 32, 4, 3)],
}


def config_kind(dtype: torch.dtype, precision: str) -> str:
    """The key of ``CONFIGS`` for operands of `dtype` multiplied at `precision` (a ``tl.dot`` mode)."""
    if dtype == torch.float64:
        return "fp64"
    return "fma" if precision == "ieee" else "tc"


def smem_estimate(config: triton.Config, dtype: torch.dtype, precision: str, gated: bool, arch: int) -> int:
    """An upper bound on the shared memory (bytes) Triton gives the kernel with `config` on compute capability `arch`.

    A pipeline stage holds the A tile (and the gate's, same shape) and the B tile in the operands' element size
    (bf16 operands are staged as float32 and rounded in registers). Triton keeps num_stages - 1 stages in shared
    memory; on sm_90+ the tensor-core kinds (wgmma) keep one more B tile, and one more A tile where A is not gated
    (a gated A reaches wgmma from registers); the gated FMA path stages the masked A tile once more. Compared with
    the compiler's own figure (``tests/kernels/gemm_aot.py``) for every configuration of ``CONFIGS`` and the six before them, every
    kind, call site (``CALL_SITES``) and arch 80 and 90: never below it; equal to it for tf32, strict float32 and
    float64, and for bf16 on sm_80; for bf16 on sm_90 up to 40 % above (that path stages a bf16 copy of B instead
    of the extra float32 tiles). tests/kernels/test_matmul_configs.py checks the kept ones. Other archs: not checked.
    """
    size = 8 if dtype == torch.float64 else 4
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    kind = config_kind(dtype, precision)
    a_tile, b_tile = bm * bk * size, bk * bn * size
    extra = 0
    if arch >= 90 and kind == "tc":
        extra = b_tile + (0 if gated else a_tile)
    elif kind == "fma" and gated:
        extra = a_tile
    return max(config.num_stages - 1, 1) * (a_tile * (2 if gated else 1) + b_tile) + extra


def fits(config: triton.Config, dtype: torch.dtype, precision: str, gated: bool, arch: int,
         smem_limit: int | None = None) -> bool:
    """Whether `config` can launch on `arch` (limit: `smem_limit`, else ``ARCH_SMEM[arch]``)."""
    limit = ARCH_SMEM[arch] if smem_limit is None else smem_limit
    return smem_estimate(config, dtype, precision, gated, arch) <= limit


def kept_configs(dtype: torch.dtype, precision: str, gated: bool, arch: int,
                 smem_limit: int | None = None) -> list[triton.Config]:
    """The configurations the launcher benchmarks for these operands on `arch` (the prune's answer)."""
    return [c for c in CONFIGS[config_kind(dtype, precision)] if fits(c, dtype, precision, gated, arch, smem_limit)]


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major * 10 + props.minor, props.shared_memory_per_block_optin


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """``early_config_prune``: keep the configurations of the operands' kind that fit the running device.

    The device: the operands', else (CPU tensors compiled, not interpreted: tools/kernel_matrix.py's capture under a
    fake device) the current CUDA device. Under the interpreter only the kind is chosen. Raises where none fits.
    """
    a = named_args["a_ptr"]
    kind = CONFIGS[config_kind(a.dtype, kwargs["PRECISION"])]
    configs = [c for c in configs if c in kind]
    if a.device.type == "cuda" and a.device.index is not None:
        index = a.device.index
    elif a.device.type != "cuda" and INTERPRET:
        return configs
    else:
        try:
            index = torch.cuda.current_device()
        except (AssertionError, RuntimeError):   # no CUDA: nothing to fit; the launch fails on its own
            return configs
    arch, limit = _device_limits(index)
    kept = [c for c in configs if fits(c, a.dtype, kwargs["PRECISION"], kwargs["GATED"], arch, limit)]
    if not kept:
        raise RuntimeError(f"no GEMM configuration fits {limit} B of shared memory (sm_{arch}, {a.dtype}, "
                           f"{kwargs['PRECISION']}, gated={kwargs['GATED']})")
    return kept


class _KeepRowSq:
    """Autotune hooks: the benchmark runs add into ``row_sq`` too, so it is saved before each and restored after.

    (``reset_to_zero`` would instead wipe what the caller's row_sq held, on the first call per key only.)
    """

    def __init__(self) -> None:
        self.saved: torch.Tensor | None = None

    def pre(self, nargs: dict, reset_only: bool = False) -> None:
        if nargs.get("ROW_SQ") and not reset_only:
            self.saved = nargs["sq_ptr"].clone()

    def post(self, nargs: dict, exception=None) -> None:
        if self.saved is not None:
            nargs["sq_ptr"].copy_(self.saved)
            self.saved = None


AUTOTUNE_KEY = ["M", "N", "K", "HAS_BIAS", "RELU", "GATED", "ROW_SQ", "PRECISION", "ACC", "A_K_CONTIG", "B_N_CONTIG",
                "WIDE"]


def make_launcher(fn=None, configs: list[triton.Config] | None = None, do_bench=None):
    """The autotuned launcher (the tensors' dtypes join the key by themselves). `fn`, `configs`, `do_bench`: for
    tests, which build one around the interpreted kernel."""
    keep = _KeepRowSq()
    configs = [c for kind in CONFIGS.values() for c in kind] if configs is None else configs
    unique = list(dict.fromkeys(configs))
    return triton.autotune(unique, key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": prune_configs},
                           pre_hook=keep.pre, post_hook=keep.post, do_bench=do_bench)(fn or _matmul_kernel)


# Units training at once launch from several threads. A launch whose key is not tuned yet
# benchmarks the configurations, with the pre/post hooks' saved copy of row_sq in shared
# state: one launch at a time keeps those apart and the timings clean. The GIL already
# serialises the Python side of a launch, so this costs nothing once tuned.
_LAUNCH_LOCK = threading.Lock()

if INTERPRET:
    _launch = _matmul_kernel
    _FIXED = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}
else:
    _launch = make_launcher()
    _FIXED = {}


def matmul(a: torch.Tensor, b: torch.Tensor, *, bias: torch.Tensor | None = None, relu: bool = False,
           gate: torch.Tensor | None = None, row_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``gate(a) @ b (+ bias) (ReLU)`` as a new contiguous tensor; ``row_sq`` (M) gains each row's sum of squares
    (what it held is kept: pass zeros for the sums alone).

    ``gate``, when given, has a's shape and strides; a is read as 0 where gate <= 0. a, b, bias and row_sq
    share one dtype, float32 or float64; every tensor one device. Anything else: ``KernelInputError``.
    """
    args = Args("matmul")
    args.tensor("a", a, "M K")
    args.tensor("b", b, "K N", "a")
    if bias is not None:
        args.tensor("bias", bias, "N", "a", layout=ROWS)
    if gate is not None:
        args.tensor("gate", gate, "M K", None)
        args.strides_like("gate", gate, "a", a)
    if row_sq is not None:
        args.tensor("row_sq", row_sq, "M", "a", layout=ROWS)
    (m, k), n = a.shape, b.shape[1]
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)
    dummy = c   # stands in for absent optional pointers; never read
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    with _LAUNCH_LOCK:
        _launch[grid](a, b, c, dummy if bias is None else bias, dummy if gate is None else gate,
                      dummy if row_sq is None else row_sq, m, n, k,
                      a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                      HAS_BIAS=bias is not None, RELU=relu, GATED=gate is not None, ROW_SQ=row_sq is not None,
                      **dot_args(a.dtype), A_K_CONTIG=a.stride(1) == 1, B_N_CONTIG=b.stride(1) == 1,
                      WIDE=wide(a, b, c), **_FIXED)
    return c
