"""Ahead-of-time compiles of the encoder GEMM (kernels/matmul.py) for GPU targets, with no GPU: the tests' tool.

Not importable under TRITON_INTERPRET=1, where the kernel is not compilable: tests/kernels/test_matmul_configs.py
runs it in a subprocess.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

from drcl_fast.kernels import matmul as mm

# The encoder's GEMMs: (HAS_BIAS, RELU, GATED, ROW_SQ, A_K_CONTIG, B_N_CONTIG) as linear_relu and mixup_project
# call matmul (x W^T: B is W transposed, so K-contiguous; grad^T x: A is M-contiguous).
CALL_SITES = {
    "linear_relu forward": (True, True, False, False, True, False),
    "tail forward (row_sq)": (False, False, False, True, True, False),
    "linear_relu dx": (False, False, True, False, True, True),
    "linear_relu dW": (False, False, True, False, False, True),
    "tail dh": (False, False, False, False, True, True),
    "tail dW": (False, False, False, False, False, True),
}


def compile_aot(config: triton.Config, dtype: torch.dtype, precision: str, arch: int, site: str = "linear_relu dx",
                aligned: bool = True):
    """Compile the kernel for `arch` (80, 90, ...) without a GPU, as a launch at `site` (``CALL_SITES``) would:
    stride-1 arguments as constants, pointers divisible by 16, and sizes and other strides too where `aligned`
    (the production shapes; odd test shapes are not). Returns Triton's CompiledKernel
    (``.metadata.shared``: bytes of shared memory; ``ptxas_usage`` for registers and spills). Not under the
    interpreter, whose kernel is not compilable."""
    if mm.INTERPRET:
        raise RuntimeError("compile_aot needs TRITON_INTERPRET unset")
    has_bias, relu, gated, row_sq, a_k_contig, b_n_contig = CALL_SITES[site]
    ones = {"s_cn", "s_ak" if a_k_contig else "s_am", "s_bn" if b_n_contig else "s_bk"}
    constants = dict(HAS_BIAS=has_bias, RELU=relu, GATED=gated, ROW_SQ=row_sq, PRECISION=precision,
                     ACC=tl.float64 if dtype == torch.float64 else tl.float32, A_K_CONTIG=a_k_contig,
                     B_N_CONTIG=b_n_contig, WIDE=False, **config.kwargs)
    signature, attrs = {}, {}
    for i, name in enumerate(mm._matmul_kernel.arg_names):
        if name in ones:
            signature[name], constants[name] = "constexpr", 1
        elif name in constants:
            signature[name] = "constexpr"
        else:
            signature[name] = ("*fp64" if dtype == torch.float64 else "*fp32") if name.endswith("_ptr") else "i32"
            if aligned or name.endswith("_ptr"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(mm._matmul_kernel, signature, constants, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def ptxas_usage(kernel, arch: int) -> tuple[int, int]:
    """(registers a thread, bytes of spill stores a thread) of a ``compile_aot`` kernel, from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
                              ptx, "-o", os.path.join(tmp, "k.o")], capture_output=True, text=True, check=True).stderr
    return (int(re.search(r"Used (\d+) registers", log).group(1)),
            int(re.search(r"(\d+) bytes spill stores", log).group(1)))
