"""Peak memory of one RSC loss forward+backward beyond its inputs, in a fresh process per case.

    .venv/bin/python bench/loss_memory.py                  # B = 1,024, D = 2,048, C = 10 and 200
    .venv/bin/python bench/loss_memory.py --b 64 --d 256   # quick

How: a child process builds the inputs (bench_loss.loss_inputs), runs the loss
once at a tiny size to load libraries and code paths, resets the kernel's
resident-set high-water mark (/proc/self/clear_refs), then runs forward+backward
once and reports VmHWM minus the resident set just before: the most memory the
loss added at any moment, whoever allocated it (torch's allocator, BLAS).
Linux only. On a GPU the suite reads torch.cuda.max_memory_allocated instead.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loss import CLASSES, IMPLS, forward_backward, loss_inputs  # noqa: E402


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def child(impl: str, b: int, d: int, c: int) -> None:
    inputs = loss_inputs(b, d, c)
    forward_backward(impl, *loss_inputs(8, c, c))   # the prior needs D >= C
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    forward_backward(impl, *inputs)
    print(json.dumps({"peak_mib": (_kib("VmHWM") - before) / 1024}))


def measure(b: int, d: int) -> list[dict]:
    rows = []
    for c in CLASSES:
        for impl in IMPLS:
            out = subprocess.run([sys.executable, __file__, "--child", impl, str(b), str(d), str(c)],
                                 capture_output=True, text=True, check=True)
            rows.append({"impl": impl, "b": b, "d": d, "c": c, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b", type=int, default=1024)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "B", "D", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, *sizes = args.child
        child(impl, *map(int, sizes))
    else:
        print(table(measure(args.b, args.d)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
