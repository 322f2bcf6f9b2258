"""One training step with units at once in threads, as the trainer runs them on the CPU.

Each of `--units` threads (one intra-op thread each) trains its own encoder on its own
data, step after step; the line per step kind is each thread's median time a step:

- `autograd`: the step through autograd (the reference twin of the others);
- `python`: the closed-form step in Python (drcl_fast/training/encoder_step.py);
- `native`: that step as one C++ call, the GIL released (drcl_fast.training._step_cpp), what the
  trainer runs where the extension is built.

    OMP_NUM_THREADS=2 python bench/cpu/units_step.py --phase rsc            # the demo's shapes
    OMP_NUM_THREADS=2 python bench/cpu/units_step.py --phase spl --batch 1024 --rows 2173 --input 128

docs/training.md has the figures.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from drcl_fast import ops
from drcl_fast.model import seeded_encoder
from drcl_fast.training import encoder_step, rsc, spl
from drcl_fast.training.optim import adam
from drcl_fast.training.spl import initial_prior

KINDS = ("autograd", "python", "native")


def make_step(kind: str, phase: str, a: argparse.Namespace, seed: int):
    """A closure running one training step of a fresh unit, drawing its batch as the trainer does."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(a.rows, a.input, generator=g)
    targets = torch.eye(a.classes)[torch.randint(0, a.classes, (a.rows,), generator=g)]
    prior = initial_prior(a.output, a.classes, seed)
    pinv = ops.prior_pinv(prior)
    encoder = seeded_encoder(a.input, a.hidden, a.output, seed)
    trained_prior = torch.nn.Parameter(prior.clone())
    optimizer = adam([*encoder.parameters(), trained_prior] if phase == "spl" else encoder.parameters(), 1e-4)
    step = None if kind == "autograd" else encoder_step.EncoderStep(encoder)
    if kind == "python":
        step.native_rsc = step.native_spl = lambda *args: None
    settings = rsc.RSCSettings(lr=1e-4, epochs=1, batch_size=a.batch, hidden_dim=a.hidden)
    if phase == "rsc":
        rsc_step = rsc.RSCStep(encoder, step, prior, pinv, settings, targets)
        gradients = lambda rows: rsc_step(x[rows], targets[rows], torch.randperm(a.batch, generator=g), 0.5)
    else:
        spl_step = spl.SPLStep(encoder, step, trained_prior, "auto")
        gradients = lambda rows: spl_step(x[rows], targets[rows], 0.5)

    def run() -> None:
        idx = torch.randperm(a.rows, generator=g)[:a.batch]
        optimizer.zero_grad(set_to_none=True)
        gradients(idx)
        optimizer.step()
    return run


def time_units(kind: str, phase: str, a: argparse.Namespace) -> list[float]:
    """Each thread's median seconds a step, all threads stepping at once."""
    medians = [0.0] * a.units
    start = threading.Barrier(a.units)

    def worker(i: int) -> None:
        torch.set_num_threads(1)
        run = make_step(kind, phase, a, seed=i + 1)
        for _ in range(a.warmup):
            run()
        start.wait()
        times = []
        for _ in range(a.steps):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        medians[i] = statistics.median(times)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.units)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("rsc", "spl"), default="rsc")
    parser.add_argument("--units", type=int, default=2)
    parser.add_argument("--batch", type=int, default=140)
    parser.add_argument("--rows", type=int, default=1400)
    parser.add_argument("--input", type=int, default=216)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--output", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="the kinds alternated this many times")
    a = parser.parse_args()
    kinds = [k for k in KINDS if k != "native" or encoder_step.NATIVE_AVAILABLE]
    print(f"{a.phase} step, B={a.batch} d_in={a.input} H={a.hidden} D={a.output} C={a.classes}, "
          f"{a.units} unit(s) at once, one intra-op thread each")
    for _ in range(a.rounds):
        for kind in kinds:
            medians = time_units(kind, a.phase, a)
            print(f"{kind:9s} " + " ".join(f"{1e3 * m:.2f}" for m in medians) + " ms a step", flush=True)


if __name__ == "__main__":
    main()
