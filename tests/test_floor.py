"""The matrix floor a run reports (drcl_fast/floor.py) counts the products the run makes."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from drcl_fast.config import DRCLConfig
from drcl_fast.floor import matrix_rate
from drcl_fast import trainer
from drcl_fast.trainer import fit

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
    monkeypatch.setattr(trainer, "matrix_rate", lambda *args: 1e11)
    cfg = DRCLConfig.preset("mfeat", epochs=2, hidden_shape=256, output_shape=64, batch_size=50,
                            out=str(tmp_path), quiet=True, device="cpu", backend="torch", concurrent_units=1)
    with ProductFlops() as products:
        result = fit(mfeat, cfg, progress=False)
    assert 0.85 * products.flops <= result.train_flops <= products.flops, (result.train_flops, products.flops)
    assert result.floor is not None and result.floor.flops == result.train_flops
    assert result.floor.floor_seconds == result.train_flops / 1e11 and "% of that floor" in result.floor.line()


def test_matrix_rate_is_a_measured_positive_rate():
    rate = matrix_rate(64, 16, torch.device("cpu"), seconds=0.01)
    assert 1e6 < rate < 1e15
