"""One whole RSC step on the CPU (encode, Mixup, loss, backward, Adam): reference against restructured.

`torch` is the reference through autograd; `restructured-autograd` the restructured loss with
the step through autograd; `restructured-python` the closed-form step in Python
(drcl_fast/training/encoder_step.py); `restructured` the step the trainer runs on the CPU (that step as
one C++ call where drcl_fast.training._step_cpp is built, the same bits).

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python -m pytest bench/cpu/bench_loss.py bench/cpu/bench_rsc_step.py \
        --benchmark-json=bench/results/loss_cpu.json           # with the loss cases: one table (bench_loss.py)

Two shapes: the `make demo` preset (B = 140, d_in = 240, H = 1,024, D = 512, C = 10),
where the encoder's GEMMs dominate, and a loss-heavy one (B = 1,024, d_in = 256,
H = 1,024, D = 2,048, C = 10). What the loss's speed-up buys end to end on a CPU.
`DRCL_BENCH_SIZE=tiny` shrinks both.
"""
from __future__ import annotations

import os

import pytest
import torch

from drcl_fast import ops
from drcl_fast.model import seeded_encoder
from drcl_fast.training.encoder_step import step_for
from drcl_fast.training.optim import adam
from drcl_fast.training.rsc import RSCSettings, RSCStep
from drcl_fast.training.spl import initial_prior

TINY = os.environ.get("DRCL_BENCH_SIZE") == "tiny"
SHAPES = {"demo": (140, 240, 1024, 512, 10), "loss-heavy": (1024, 256, 1024, 2048, 10)}
if TINY:
    SHAPES = {"demo": (28, 24, 32, 16, 10), "loss-heavy": (64, 16, 32, 64, 10)}


def make_step(impl: str, b: int, d_in: int, h: int, d: int, c: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d_in, generator=g)
    targets = torch.eye(c)[torch.randint(0, c, (b,), generator=g)]
    perm = torch.randperm(b, generator=g)
    prior = initial_prior(d, c, seed=1)
    pinv = ops.prior_pinv(prior)
    encoder = seeded_encoder(d_in, h, d, seed=1)
    optimizer = adam(encoder.parameters(), 1e-5)
    backend, _, variant = impl.partition("-")
    settings = RSCSettings(lr=1e-5, epochs=1, batch_size=b, hidden_dim=h, backend=backend)
    closed_form = None if variant == "autograd" else step_for(encoder, backend, torch.device("cpu"))
    if variant == "python":
        closed_form.native_rsc = lambda *args: None
    gradients = RSCStep(encoder, closed_form, prior, pinv, settings, targets)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = gradients(x, targets, perm, 0.5)[0]
        optimizer.step()
        return loss.item()
    return step


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["torch", "restructured-autograd", "restructured-python", "restructured"])
def test_rsc_step(benchmark, impl, shape):
    b, d_in, h, d, c = SHAPES[shape]
    assert make_step(impl, *SHAPES[shape])() == pytest.approx(make_step("torch", *SHAPES[shape])(), rel=1e-5)
    benchmark.group = f"RSC step {shape} B={b} d_in={d_in} H={h} D={d} C={c}"
    benchmark.extra_info.update(impl=impl, threads=torch.get_num_threads())
    benchmark.pedantic(make_step(impl, *SHAPES[shape]), rounds=7, iterations=1, warmup_rounds=1)
