"""Peak memory of one evaluation beyond its inputs, measured in a fresh process.

    .venv/bin/python bench/cpu/map_memory.py                 # Q = N = 5,000, D = 512, every CPU backend
    .venv/bin/python bench/cpu/map_memory.py --size 200      # quick
    .venv/bin/python bench/cpu/map_memory.py --size 1000 --bounded 1   # the bounded case chunks at this size too

How: the parent writes the inputs to .npy files; a child process loads them
(np.load: no temporaries beyond the arrays) and measures one evaluation as
peak_memory.py says (the kernel's resident-set high-water mark). Linux only.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import peak_memory

# (backend, k, max_memory); BOUNDED stands for the --bounded budget.
BOUNDED = "bounded"
CASES = [("torch", None, None), ("cpp", None, None), ("cpp", 50, None), ("cpp", None, BOUNDED)]


def child(folder: str, backend: str, k: str, max_memory: str) -> dict:
    import torch
    from drcl_fast.retrieval import evaluate_map
    arrays = [torch.from_numpy(np.load(Path(folder) / f"{name}.npy")) for name in ("q", "yq", "g", "yg")]
    evaluate_map(*[a[:2] for a in arrays], backend=backend)  # load libraries and code paths first
    value, _, peak = peak_memory.added_peak(lambda: evaluate_map(
        *arrays, k=None if k == "None" else int(k), backend=backend,
        max_memory=None if max_memory == "None" else int(max_memory)))
    return {"peak_mib": peak, "map": value}


def measure(size: int, dim: int = 512, bounded: int = 16 * 2**20) -> list[dict]:
    from drcl_fast.data.synthetic import make_retrieval_set
    from drcl_fast.retrieval import cpp
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for labels, preset in [("single10", "nus-wide-single"), ("multi21", "nus-wide")]:
            data = make_retrieval_set(preset, dim, num_queries=size, gallery_size=size, seed=0)
            for name in ("query", "query_labels", "gallery", "gallery_labels"):
                short = {"query": "q", "query_labels": "yq", "gallery": "g", "gallery_labels": "yg"}[name]
                np.save(Path(folder) / f"{short}.npy", getattr(data, name).numpy())
            inputs_mib = sum(getattr(data, n).numel() * getattr(data, n).element_size()
                             for n in ("query", "gallery")) / 2**20
            for backend, k, max_memory in [c for c in CASES if c[0] != "cpp" or cpp.AVAILABLE]:
                max_memory = bounded if max_memory == BOUNDED else max_memory
                result = peak_memory.in_child(__file__, folder, backend, str(k), str(max_memory))
                rows.append({"labels": labels, "backend": backend, "k": k, "max_memory": max_memory,
                             "size": size, "inputs_mib": inputs_mib, **result})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| labels | backend | MAP@ | max_memory | Q = N | embeddings (MiB) | peak beyond inputs (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = "default" if r["max_memory"] is None else f"{r['max_memory'] / 2**20:g} MiB"
        lines.append(f"| {r['labels']} | {r['backend']} | {r['k'] or 'all'} | {budget} | {r['size']} | "
                     f"{r['inputs_mib']:.1f} | {r['peak_mib']:.1f} |")
    return "\n".join(lines)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=5_000)
    parser.add_argument("--bounded", type=float, default=16, metavar="MIB",
                        help="max_memory of the bounded case, MiB (default 16)")


def main(argv: list[str] | None = None) -> int:
    return peak_memory.main(argv, __doc__, options, child,
                            lambda args: table(measure(args.size, bounded=int(args.bounded * 2**20))))


if __name__ == "__main__":
    sys.exit(main())
