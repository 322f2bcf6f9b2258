"""The GPU suite: correctness on the GPU first, then every fast path against its reference.

    PYTHONPATH=. python bench/gpu/gpu_suite.py --out bench/results        # on a GPU, < 5 minutes
    PYTHONPATH=. python bench/gpu/gpu_suite.py --smoke                    # tiny sizes, CPU + Triton interpreter

Each section lives in its own module of this folder (gpu_map.py: retrieval evaluation;
gpu_search.py: exact top-k search; gpu_train.py: the fused training kernels;
gpu_pipeline.py: the whole Wikipedia-shaped run, reference trainer against the fast one;
gpu_distributed.py: a one-rank torchrun run against the plain one; gpu_kernels.py:
registers, spills and shared memory of every Triton kernel that ran, on this card) and
exposes `run(suite: Suite) -> None`, which adds rows to the suite's one table. The
sections import one another by bare name (this folder is the script's, first on sys.path)
and what they share with the CPU runs as bench.shared, from the repository root that
PYTHONPATH=. puts on sys.path (a bare GPU machine needs it for drcl_fast too). Without
a GPU, `--smoke` runs every section at tiny sizes under TRITON_INTERPRET=1 so
the script cannot rot; the test suite runs it that way.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# gpu_kernels last: it reports what ran.
SECTIONS = ("gpu_map", "gpu_search", "gpu_train", "gpu_pipeline", "gpu_distributed", "gpu_kernels")


@dataclass
class Suite:
    smoke: bool
    device: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, section: str, case: str, measure: str, note: str = "") -> None:
        """One table row; prints it at once, so a run cut short still shows its progress."""
        self.rows.append((section, case, measure, note))
        print(f"| {section} | {case} | {measure} | {note} |", flush=True)


def environment() -> list[str]:
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU, Triton interpreter)"
    return [f"card: {card}", f"torch {torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}, "
            f"python {platform.python_version()}", f"date: {datetime.date.today().isoformat()}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; runs without a GPU")
    parser.add_argument("--only", choices=SECTIONS, nargs="+", default=list(SECTIONS))
    parser.add_argument("--out", default=None, help="folder to write the table to (markdown)")
    args = parser.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        if not args.smoke:
            parser.error("no CUDA device here: run with --smoke, or on a GPU")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    suite = Suite(smoke=args.smoke, device="cuda" if torch.cuda.is_available() else "cpu")
    header = environment()
    print("\n".join(header))
    print("| section | case | measured | note |\n|---|---|---|---|", flush=True)
    start = time.time()
    for name in args.only:
        importlib.import_module(name).run(suite)
    header.append(f"suite time: {time.time() - start:.1f} s{' (smoke)' if args.smoke else ''}")
    if args.out:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
        path = Path(args.out) / f"gpu_suite_{stamp}{'_smoke' if args.smoke else ''}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = ["| section | case | measured | note |", "|---|---|---|---|"]
        table += [f"| {' | '.join(row)} |" for row in suite.rows]
        path.write_text("# GPU suite\n\n" + "\n".join(f"- {line}" for line in header) + "\n\n"
                        + "\n".join(table) + "\n")
        print(f"table written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
