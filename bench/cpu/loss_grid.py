"""Where the restructured loss pays off on this CPU: a grid of shapes, each timed against the reference.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/cpu/loss_grid.py > bench/results/loss_grid_cpu.md

Forward+backward of the reference and the restructured loss in alternation (medians),
B in {64, 140, 256, 512, 1024}, D in {64, 256, 512, 2048}, C in {10, 80, 200} (C <= D),
with the choice `ops` makes on "auto" (``restructured.pays_off``) beside each, so a
rule that no longer fits the measurements shows. `--quick`: three shapes (the test suite).
"""
from __future__ import annotations

import argparse
import sys

import repo_root  # noqa: F401 - bench.shared
from bench.shared.loss_case import alternated_medians, forward_backward, loss_inputs
from drcl_fast.ops.restructured import pays_off

GRID = [(b, d, c) for b in (64, 140, 256, 512, 1024) for d in (64, 256, 512, 2048) for c in (10, 80, 200) if c <= d]
QUICK = [(64, 64, 10), (140, 64, 10), (64, 64, 40)]


def speedup(b: int, d: int, c: int) -> tuple[float, float, float]:
    """(reference ms, restructured ms, their ratio), medians of calls in alternation."""
    inputs = loss_inputs(b, d, c)
    impls = ("torch", "restructured")
    for impl in impls:
        forward_backward(impl, *inputs)   # warm-up
    ref, fast = alternated_medians(impls, inputs, 30 if b * b * d < 1e8 else 8).values()
    return ref * 1e3, fast * 1e3, ref / fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three small shapes only")
    args = parser.parse_args(argv)
    print("| B | D | C | reference (ms) | restructured (ms) | speed-up | auto picks | |")
    print("|---|---|---|---|---|---|---|---|")
    for b, d, c in QUICK if args.quick else GRID:
        ref, fast, ratio = speedup(b, d, c)
        pick = "restructured" if pays_off(b, d, c) else "reference"
        wrong = (pick == "restructured") != (ratio > 1.0)
        print(f"| {b} | {d} | {c} | {ref:.2f} | {fast:.2f} | {ratio:.2f}x | {pick} | {'off' if wrong else ''} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
