"""The matrix floor a run reports (drcl_fast/runtime/floor.py) counts the products the run makes."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from drcl_fast.config import DRCLConfig
from drcl_fast.runtime.floor import Floor, matrix_rate
from drcl_fast.training import trainer
from drcl_fast.training.trainer import fit

aten = torch.ops.aten


class ProductFlops(TorchDispatchMode):
    """Every dense matrix product's floating-point operations, as they are dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (aten.mm.default, aten.addmm.default, aten.addmm_.default):
            a, b = args[-2], args[-1]
            if a.layout == torch.strided:
                self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        elif func in (aten.bmm.default, aten.baddbmm.default):
            a, b = args[-2], args[-1]
            self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        return out


def test_the_counted_products_are_most_of_the_runs_and_never_more(mfeat, tmp_path, monkeypatch):
    """Left out by design: the loss's own products, test encodes and the evaluation (about a tenth at these small sizes).
    The rate measurement after training is not the run's work: it is replaced here. One unit at a time:
    a dispatch mode sees the products of its own thread only."""
    monkeypatch.setattr(trainer, "matrix_rate", lambda *args, **kwargs: 1e11)
    cfg = DRCLConfig.preset("mfeat", epochs=2, hidden_shape=256, output_shape=64, batch_size=50,
                            out=str(tmp_path), quiet=True, device="cpu", backend="torch", concurrent_units=1)
    with ProductFlops() as products:
        result = fit(mfeat, cfg, progress=False)
    assert 0.85 * products.flops <= result.train_flops <= products.flops, (result.train_flops, products.flops)
    assert result.floor is not None and result.floor.flops == result.train_flops
    assert result.floor.floor_seconds == result.train_flops / 1e11 and result.floor.device == "cpu"
    assert "% of this CPU's measured matrix-product speed" in result.floor.line()


def test_matrix_rate_is_a_measured_positive_rate():
    rate = matrix_rate(64, 16, torch.device("cpu"), seconds=0.01)
    assert 1e6 < rate < 1e15


def test_the_line_speaks_plainly_first_then_gives_the_arithmetic():
    """A newcomer reads the time and the fraction first; the TFLOP arithmetic follows in brackets."""
    cpu = Floor(flops=7_950_000_000_000, rate=120e9, seconds=96.1)
    assert cpu.line() == ("training took 96 s, 69 % of this CPU's measured matrix-product speed (its encoder "
                          "products, 7.95 TFLOP, need 66.2 s at the measured 120 GFLOP/s)")
    gpu = Floor(flops=7_950_000_000_000, rate=30e12, seconds=0.9, device="cuda")
    assert gpu.line() == ("training took 0.9 s, 29 % of this GPU's measured matrix-product speed (its encoder "
                          "products, 7.95 TFLOP, need 0.3 s at the measured 30 TFLOP/s)")
    tiny = Floor(flops=2_100_000_000, rate=5e9, seconds=4.63)
    assert tiny.line().startswith("training took 4.6 s, 9 % of this CPU's")
    assert "(its encoder products, 2.1 GFLOP, need 0.4 s at the measured 5 GFLOP/s)" in tiny.line()
    rounded = Floor(999_600_000, 1e9, 2.0).line()   # 999.6 MFLOP shows as 1 GFLOP, not 1e+03 MFLOP
    assert "(its encoder products, 1 GFLOP, need 1.0 s at the measured 1 GFLOP/s)" in rounded
