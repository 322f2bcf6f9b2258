"""Peak memory of one RSC loss forward+backward beyond its inputs, in a fresh process per case.

    .venv/bin/python bench/cpu/loss_memory.py                  # B = 1,024, D = 2,048, C = 10 and 200
    .venv/bin/python bench/cpu/loss_memory.py --b 64 --d 256   # quick

How: a child process builds the inputs (bench.shared.loss_case.loss_inputs), runs the loss
once at a tiny size to load libraries and code paths, then measures one forward+backward
as peak_memory.py says (the kernel's resident-set high-water mark). Linux only.
"""
from __future__ import annotations

import argparse
import sys

import peak_memory
import repo_root  # noqa: F401 - bench.shared
from bench.shared.loss_case import forward_backward, loss_inputs
from bench_loss import CLASSES, IMPLS


def child(impl: str, b: str, d: str, c: str) -> dict:
    b, d, c = int(b), int(d), int(c)
    inputs = loss_inputs(b, d, c)
    forward_backward(impl, *loss_inputs(8, c, c))   # the prior needs D >= C
    return {"peak_mib": peak_memory.added_peak(lambda: forward_backward(impl, *inputs))[2]}


def measure(b: int, d: int) -> list[dict]:
    return [{"impl": impl, "b": b, "d": d, "c": c, **peak_memory.in_child(__file__, impl, str(b), str(d), str(c))}
            for c in CLASSES for impl in IMPLS]


def table(rows: list[dict]) -> str:
    ref = {r["c"]: r["peak_mib"] for r in rows if r["impl"] == "torch"}
    lines = ["| B | D | C | implementation | peak beyond inputs (MiB) | vs reference |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['peak_mib'] / ref[r['c']]:.2f}" if ref[r["c"]] > 0 else "—"   # tiny sizes fit freed pages
        lines.append(f"| {r['b']} | {r['d']} | {r['c']} | {r['impl']} | {r['peak_mib']:.1f} | {ratio} |")
    b, d = rows[0]["b"], rows[0]["d"]
    lines.append(f"\nFor scale: one B x B float32 matrix is {b * b * 4 / 2**20:.1f} MiB, one B x D "
                 f"{b * d * 4 / 2**20:.1f} MiB.")
    return "\n".join(lines)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--b", type=int, default=1024)
    parser.add_argument("--d", type=int, default=2048)


def main(argv: list[str] | None = None) -> int:
    return peak_memory.main(argv, __doc__, options, child, lambda args: table(measure(args.b, args.d)))


if __name__ == "__main__":
    sys.exit(main())
