"""The RSC loss forward+backward on the CPU: the reference against the restructured fast path.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python -m pytest bench/cpu/bench_loss.py bench/cpu/bench_rsc_step.py \
        --benchmark-json=bench/results/loss_cpu.json
    PYTHONPATH=. .venv/bin/python bench/cpu/loss_table.py bench/results/loss_cpu.json --memory > bench/results/loss_cpu.md

B = 1,024, D = 2,048, C = 10 and 200: one RSC batch (bench.shared.loss_case: unit rows mixed
with gamma = 0.9, mixed one-hot targets, L = W+ of an orthonormal prior), q = 0.5, J = J_L
+ 0.1 J_D + 0.1 J_MSE, one backward. Each case first checks its terms against the
reference. `DRCL_BENCH_SIZE=tiny`: B = 64, D = 256 (the test suite runs that).

A shared machine speeds up and slows down over seconds, which moves a ratio of two
timings taken one after the other. So each fast case also times itself and the
reference alternately, PAIRS times, and records that ratio of medians
(`interleaved_speedup`), the figure the bar is read from.
"""
from __future__ import annotations

import os

import pytest
import torch

import repo_root  # noqa: F401 - bench.shared
from bench.shared.loss_case import alternated_medians, forward_backward, loss_inputs

TINY = os.environ.get("DRCL_BENCH_SIZE") == "tiny"
B, D = (64, 256) if TINY else (1024, 2048)
CLASSES = (10, 200)
IMPLS = ("torch", "restructured")
PAIRS = 3 if TINY else 15


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
    medians = alternated_medians(("torch", impl), inputs, PAIRS)
    return medians["torch"] / medians[impl]
