"""A training run's matrix floor: the time its encoder products need at the machine's measured rate.

The figure `make demo` and `drcl-fast train` print after a run ("training took 96 s, 69 % of
this CPU's measured matrix-product speed (...)"): the run's training time against the time
the floating-point work of its encoder products (every SPL and RSC step's forward and
backward GEMMs, the projections by W, the per-epoch encodes of the scored or validated
split) needs at the rate this machine's ``torch.mm`` reaches at the run's main
product shape, measured before and after training (the faster taken). The loss's own
products and the test-split encodes are left out, so the floor is a lower bound and the
fraction a conservative one (``tests/training/test_floor.py`` checks the count against every
product a run makes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from drcl_fast.config import DEFAULT_PRECISION
from drcl_fast.runtime.precision import compute_dtype, matrix_precision


@dataclass(frozen=True)
class UnitShape:
    """One training unit's sizes: rows per split, widths, batch and epochs."""

    train_rows: int
    eval_rows: int      # rows encoded after each sampled epoch: the whole train split (SPL) or valid (RSC)
    input_dim: int
    hidden_dim: int
    output_dim: int
    classes: int
    batch_size: int
    epochs: int
    sampled_epochs: int
    trains_prior: bool  # SPL trains W (its gradient is one more product); RSC's W is fixed


def forward_flops(rows: int, input_dim: int, hidden_dim: int, output_dim: int, classes: int) -> int:
    """Forward products of the encoder and the projection by W for `rows` rows."""
    return 2 * rows * (input_dim * hidden_dim + hidden_dim ** 2 + hidden_dim * output_dim + output_dim * classes)


def step_flops(batch: int, input_dim: int, hidden_dim: int, output_dim: int, classes: int,
               trains_prior: bool) -> int:
    """One training step's encoder products: the forward, then the weight and the input gradients."""
    forward = forward_flops(batch, input_dim, hidden_dim, output_dim, classes)
    weight_grads = forward - (0 if trains_prior else 2 * batch * output_dim * classes)
    input_grads = forward - 2 * batch * input_dim * hidden_dim   # the input itself takes no gradient
    return forward + weight_grads + input_grads


def unit_flops(s: UnitShape) -> int:
    """Every counted product of one unit: its steps and its evaluation encodes."""
    sizes = (s.input_dim, s.hidden_dim, s.output_dim, s.classes)
    return (s.epochs * (s.train_rows // s.batch_size) * step_flops(s.batch_size, *sizes, s.trains_prior)
            + s.sampled_epochs * forward_flops(s.eval_rows, *sizes))


def matrix_rate(hidden_dim: int, batch_size: int, device: torch.device, seconds: float = 0.15,
                precision: str = DEFAULT_PRECISION) -> float:
    """FLOP/s of torch.mm at the steps' main shape (batch x H times H x H) at `precision` on `device`
    (bf16 operands for "bf16"; TF32 tensor cores for "tf32"): the fastest of the products timed for
    `seconds`, since a busy machine only ever slows one down."""
    dtype = compute_dtype(precision) or torch.float32
    a = torch.randn(batch_size, hidden_dim, device=device).to(dtype)
    b = torch.randn(hidden_dim, hidden_dim, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with matrix_precision(precision, device):
        for _ in range(3):
            a @ b
        sync()
        fastest = float("inf")
        deadline, count = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline or count < 5:
            t = time.perf_counter()
            a @ b
            sync()
            fastest, count = min(fastest, time.perf_counter() - t), count + 1
    return 2 * batch_size * hidden_dim ** 2 / fastest


@dataclass(frozen=True)
class Floor:
    flops: int
    rate: float          # FLOP/s measured at the run's precision
    seconds: float       # the training time it is compared with
    device: str = "cpu"  # the device type the rate was measured on ("cpu", "cuda")
    precision: str = DEFAULT_PRECISION
    fp32_rate: float | None = None   # FLOP/s of float32 products, measured beside a run at another precision

    @property
    def floor_seconds(self) -> float:
        return self.flops / self.rate

    @property
    def fraction(self) -> float:
        return self.floor_seconds / self.seconds

    def line(self) -> str:
        """Plain words first, then the arithmetic: "training took 96 s, 69 % of this CPU's measured
        matrix-product speed (its encoder products, 7.95 TFLOP, need 66.3 s at the measured 120 GFLOP/s)"."""
        chip = "GPU" if self.device == "cuda" else self.device.upper()
        at = "" if self.precision == DEFAULT_PRECISION else f"{self.precision} "
        float32 = "" if self.fp32_rate is None else \
            f"; {_seconds(self.flops / self.fp32_rate, 1)} at its float32 rate, {_amount(self.fp32_rate, 'FLOP/s')}"
        return (f"training took {_seconds(self.seconds)}, {100 * self.fraction:.0f} % of this {chip}'s measured "
                f"{at}matrix-product speed (its encoder products, {_amount(self.flops, 'FLOP')}, need "
                f"{_seconds(self.floor_seconds, 1)} at the measured {_amount(self.rate, 'FLOP/s')}{float32})")


def _seconds(value: float, decimals: int | None = None) -> str:
    """A time as the line shows it: 96 s (whole seconds from 10 s on, unless `decimals` says), 4.6 s, 0.012 s."""
    if decimals is None:
        decimals = 0 if value >= 10 else 1 if value >= 0.1 else 3
    elif value < 0.1:
        decimals = 3
    return f"{value:.{decimals}f} s"


def _amount(value: float, unit: str) -> str:
    """`value` with an SI prefix that leaves three significant digits: 7.95 TFLOP, 120 GFLOP/s, 52.3 MFLOP."""
    value = float(f"{value:.3g}")   # rounded first: 999.6e6 is 1 G, not 1e+03 M
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
