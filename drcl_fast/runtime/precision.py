"""A run's matrix precision: what the encoders' products multiply in (docs/precision.md).

"fp32" multiplies float32 (the released behaviour, and the default); "tf32" lets GPU tensor cores
round the operands to TensorFloat-32 (float32 storage and accumulation); "bf16" gives the encoders'
products, forward and backward, bfloat16 operands with float32 accumulation. Whatever is chosen,
the master weights, Adam's moments, the loss and its terms, the prior's pseudo-inverse and the
embeddings a run returns stay float32 (or float64 where they are today).

bf16 on a CPU pays only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere
torch emulates it, far slower than float32, so it is refused there.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from drcl_fast.config import DEFAULT_PRECISION, PRECISIONS
from drcl_fast.errors import ConfigError

# What docs/precision.md measured of bf16 against fp32 (tests/training/test_precision.py holds the two equal).
BF16_MEASURED = ("with bf16's rounding emulated, the demo's MAP@all moved by +0.0004 (0.8450 against fp32's "
                 "0.8447); its speed on such a CPU has not been measured yet")


def flag_options() -> dict[str, object]:
    """argparse options of the --precision flag: the names and their meanings from PRECISIONS."""
    meanings = "; ".join(f"{name}: {meaning}" for name, meaning in PRECISIONS.items())
    return dict(default=None, choices=list(PRECISIONS), metavar="NAME",
                help=f"the encoders' matrix precision. {meanings} (default: {DEFAULT_PRECISION}; "
                     f"docs/precision.md)")


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype the encoders' products cast their operands to (``Encoder.compute_dtype``): bfloat16, or
    None where they take the weights' own dtype (fp32; tf32, whose rounding the tensor cores do)."""
    return torch.bfloat16 if precision == "bf16" else None


def cpu_bf16_instructions() -> str | None:
    """The CPU's native bf16 matrix instructions as torch sees them ("AMX", "AVX512-BF16"), or None."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ConfigError, before any training, if `precision` is unknown or cannot run fast on `device`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return
    if device.type == "cpu":
        if precision == "tf32":
            raise ConfigError("--precision tf32 needs a GPU's tensor cores; on the CPU choose fp32, or bf16 where "
                              "the CPU multiplies bf16 natively")
        if cpu_bf16_instructions() is None:
            raise ConfigError("--precision bf16: this CPU has no native bf16 matrix instructions (torch finds "
                              "neither AVX512-BF16 nor AMX), so bf16 would be emulated, slower than float32; "
                              "use --precision fp32 (the default) here")
        return
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            raise ConfigError(f"--precision {precision} needs a GPU of compute capability 8.0 or newer (Ampere); "
                              f"{torch.cuda.get_device_name(device)} is {major}.x: use --precision fp32")
        return
    raise ConfigError(f"--precision {precision} runs on CPUs and CUDA GPUs, not on {device.type}; use fp32")


def bf16_hint(precision: str, device: torch.device | str) -> str | None:
    """The line a float32 run on a CPU with native bf16 ends with: what --precision bf16 would change
    there, as docs/precision.md measured it. None elsewhere (and for runs at another precision)."""
    found = cpu_bf16_instructions() if precision == DEFAULT_PRECISION and torch.device(device).type == "cpu" else None
    if found is None:
        return None
    return (f"this CPU multiplies bf16 natively ({found}): --precision bf16 would run the encoders' products in "
            f"bf16 with float32 accumulation; {BF16_MEASURED} (docs/precision.md)")


@contextlib.contextmanager
def matrix_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run a block with the GPU's float32 products at `precision`: the Triton kernels' setting and cuBLAS's
    TF32 flag (the CPU has no such flag: its bf16 products cast their operands). Both are restored after."""
    device = torch.device(device)
    from drcl_fast.kernels.precision import precision as kernel_precision
    if device.type != "cuda":
        with kernel_precision(precision):
            yield
        return
    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32
    flags.allow_tf32 = precision == "tf32"
    try:
        with kernel_precision(precision):
            yield
    finally:
        flags.allow_tf32 = before
