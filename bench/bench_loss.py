"""The RSC loss forward+backward on the CPU: the reference against the restructured fast path.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python -m pytest bench/bench_loss.py bench/bench_rsc_step.py \
        --benchmark-json=bench/results/loss_cpu.json
    PYTHONPATH=. .venv/bin/python bench/loss_table.py bench/results/loss_cpu.json --memory > bench/results/loss_cpu.md

B = 1,024, D = 2,048, C = 10 and 200: a mixed batch of unit rows (gamma = 0.9),
mixed one-hot targets, L = W+ of an orthonormal prior, q = 0.5, J = J_L + 0.1 J_D
+ 0.1 J_MSE, one backward. Each case first checks its terms against the
reference. `DRCL_BENCH_SIZE=tiny`: B = 64, D = 256 (the test suite runs that).

A shared machine speeds up and slows down over seconds, which moves a ratio of two
timings taken one after the other. So each fast case also times itself and the
reference alternately, PAIRS times, and records that ratio of medians
(`interleaved_speedup`), the figure the bar is read from.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from drcl_fast import ops

TINY = os.environ.get("DRCL_BENCH_SIZE") == "tiny"
B, D = (64, 256) if TINY else (1024, 2048)
CLASSES = (10, 200)
IMPLS = ("torch", "restructured")
PAIRS = 3 if TINY else 15


def loss_inputs(b: int, d: int, c: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(f~, y~, f~ W, L) as one RSC batch has them."""
    g = torch.Generator().manual_seed(seed)
    prior = torch.linalg.qr(torch.randn(d, c, generator=g))[0]
    perm = torch.randperm(b, generator=g)
    f = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    y = torch.eye(c)[torch.randint(0, c, (b,), generator=g)]
    f, y = ops.feature_mixup(f, y, 0.9, perm)
    return f, y, f @ prior, ops.prior_pinv(prior)


def forward_backward(impl: str, f: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor
                     ) -> torch.Tensor:
    f, logits = f.detach().requires_grad_(), logits.detach().requires_grad_()
    loss = ops.drcl_loss(f, y, logits, pinv, 0.5, alpha=0.1, beta=0.1, eta=1.0, backend=impl)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("impl", IMPLS)
def test_loss_forward_backward(benchmark, impl, c):
    inputs = loss_inputs(B, D, c)
    want = forward_backward("torch", *inputs)
    assert forward_backward(impl, *inputs).item() == pytest.approx(want.item(), rel=1e-5)
    benchmark.group = f"loss B={B} D={D} C={c}"
    benchmark.extra_info.update(impl=impl, b=B, d=D, c=c, threads=torch.get_num_threads())
    if impl != "torch":
        benchmark.extra_info["interleaved_speedup"] = interleaved_speedup(impl, inputs)
    benchmark.pedantic(forward_backward, args=(impl, *inputs), rounds=9, iterations=1, warmup_rounds=1)


def interleaved_speedup(impl: str, inputs: tuple[torch.Tensor, ...]) -> float:
    """Median reference time over median `impl` time, the two timed in alternation."""
    seconds: dict[str, list[float]] = {"torch": [], impl: []}
    for _ in range(PAIRS):
        for name, times in seconds.items():
            start = time.perf_counter()
            forward_backward(name, *inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(seconds["torch"]) / statistics.median(seconds[impl])
