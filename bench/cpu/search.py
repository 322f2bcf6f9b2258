"""Exact top-k search on the CPU: `topk` against the similarity product alone, torch.topk and faiss.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cpu/search.py --out bench/results/search_cpu_<date>.md
    .venv/bin/python bench/cpu/search.py --smoke          # tiny sizes, seconds (DRCL_BENCH_SIZE=tiny too)

Q = 1,000 queries against N = 1,000,000 gallery items, D = 128, k = 10: random normal
float32 rows. In one process, one warm-up call each, then alternated rounds (medians of
--rounds, default 3):

- product: the float32 product of unit rows alone, `q @ g.T` in chunks of 250 queries,
  the floor every exact method pays;
- torch.topk over that product, in the same chunks;
- topk cpp: `drcl_fast.retrieval.topk(backend="cpp")` on the raw rows (it also validates
  and normalises them, which the two rows above get for free);
- topk torch: `backend="torch"` (a stable sort of each query's N scores), timed on the
  first --torch-queries queries and scaled to Q (it is about a hundred times slower);
- faiss IndexFlatIP: faiss's exact inner-product search of the unit rows (the index is
  built beforehand: not timed, but counted in its memory).

Each method is first checked against the exact result, `topk(backend="torch")` on the
first --torch-queries queries: topk cpp must give the same indices and score bits;
torch.topk and faiss are reported as they compare. Memory: each method once more in a
fresh process, as peak_memory.py measures it (the inputs loaded, then the kernel's
resident-set high-water mark). Linux only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import peak_memory
from drcl_fast.retrieval import topk
from machine import cpu_name, load_average

FULL = dict(queries=1_000, gallery=1_000_000, dim=128, k=10, chunk=250, torch_queries=100)
TINY = dict(queries=40, gallery=3_000, dim=16, k=5, chunk=16, torch_queries=20)
PRODUCT, TORCH_TOPK, CPP, TORCH, FAISS = ("product q @ g.T", "torch.topk over the product", "topk cpp",
                                          "topk torch", "faiss IndexFlatIP")


@dataclass
class Inputs:
    q: torch.Tensor          # raw rows, as a user passes them
    g: torch.Tensor
    k: int
    chunk: int               # queries per product chunk
    torch_queries: int       # queries the slow torch backend is timed on
    unit: tuple[torch.Tensor, torch.Tensor] | None = None   # unit rows, for the product and faiss
    index: Any = None        # the faiss index


def unit_rows(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    if x.unit is None:
        x.unit = torch.nn.functional.normalize(x.q, dim=1), torch.nn.functional.normalize(x.g, dim=1)
    return x.unit


def product(x: Inputs) -> None:
    q, g = unit_rows(x)
    for start in range(0, q.shape[0], x.chunk):
        q[start:start + x.chunk] @ g.T


def torch_topk(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    q, g = unit_rows(x)
    found = [torch.topk(q[start:start + x.chunk] @ g.T, x.k, dim=1) for start in range(0, q.shape[0], x.chunk)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def topk_cpp(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return topk(x.q, x.g, x.k, backend="cpp")


def topk_torch(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return topk(x.q[:x.torch_queries], x.g, x.k, backend="torch")


def faiss_index(x: Inputs) -> Any:
    import faiss
    if x.index is None:
        x.index = faiss.IndexFlatIP(x.g.shape[1])
        x.index.add(unit_rows(x)[1].numpy())
    return x.index


def faiss_flat(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    scores, indices = faiss_index(x).search(unit_rows(x)[0].numpy(), x.k)
    return torch.from_numpy(scores), torch.from_numpy(indices)


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


# name -> (timed call, what a fresh process prepares before its memory is measured)
METHODS: dict[str, tuple[Callable[[Inputs], Any], Callable[[Inputs], Any]]] = {
    PRODUCT: (product, unit_rows),
    TORCH_TOPK: (torch_topk, unit_rows),
    CPP: (topk_cpp, lambda x: None),
    TORCH: (topk_torch, lambda x: None),
    FAISS: (faiss_flat, unit_rows),   # the index is built inside the measurement
}


def methods() -> list[str]:
    return [name for name in METHODS if name != FAISS or has_faiss()]


def make_inputs(size: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((size["queries"], size["dim"]), dtype=np.float32),
            rng.standard_normal((size["gallery"], size["dim"]), dtype=np.float32))


def inputs(q: np.ndarray, g: np.ndarray, size: dict) -> Inputs:
    return Inputs(torch.from_numpy(q), torch.from_numpy(g), size["k"], size["chunk"], size["torch_queries"])


def check(name: str, found: Any, exact: tuple[torch.Tensor, torch.Tensor]) -> str:
    """How `found` compares with the exact top k on the queries the exact result covers."""
    if found is None:
        return "no top k (scores only)"
    rows = exact[1].shape[0]
    scores, indices = found[0][:rows], found[1][:rows]
    same_indices = torch.equal(indices, exact[1])
    same_bits = torch.equal(scores.view(torch.int32), exact[0].view(torch.int32))
    if name in (CPP, TORCH):  # exact by contract
        return "exact: same indices and score bits" if same_indices and same_bits else "FAIL: not the exact top k"
    found_share = (indices[:, :, None] == exact[1][:, None, :]).any(2).double().mean().item()
    difference = (scores - exact[0]).abs().max().item()
    return (f"{'same' if same_indices else 'other'} indices (recall {found_share:.3f}), "
            f"{'same score bits' if same_bits else f'scores within {difference:.1e}'}")


def timings(x: Inputs, rounds: int, scale: float) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds per method (topk torch scaled to all queries) and each check, alternated rounds."""
    names = methods()
    exact = topk_torch(x)
    checks = {name: check(name, METHODS[name][0](x), exact) for name in names}   # also the warm-up calls
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            METHODS[name][0](x)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    medians[TORCH] *= scale
    return medians, checks


def child(folder: str, name: str, size: str) -> dict:
    """One method's peak memory beyond its inputs, in this fresh process."""
    size = json.loads(size)
    x = inputs(np.load(Path(folder) / "q.npy"), np.load(Path(folder) / "g.npy"), size)
    timed, prepare = METHODS[name]
    small = inputs(x.q[:20].numpy(), x.g[:2000].numpy(), {**size, "k": min(size["k"], 20), "torch_queries": 20})
    timed(small)  # load libraries and code paths first
    prepare(x)
    return {"peak_mib": peak_memory.added_peak(lambda: timed(x))[2]}


def memory(q: np.ndarray, g: np.ndarray, size: dict) -> dict[str, float]:
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "q.npy", q)
        np.save(Path(folder) / "g.npy", g)
        for name in methods():
            peaks[name] = peak_memory.in_child(__file__, folder, name, json.dumps(size))["peak_mib"]
    return peaks


def versions() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"numpy {np.__version__}"]
    if has_faiss():
        import faiss
        parts.append(f"faiss {faiss.__version__}")
    return ", ".join(parts)


def render(size: dict, medians: dict[str, float], checks: dict[str, str], peaks: dict[str, float],
           rounds: int, load: tuple[str, str]) -> str:
    inputs_mib = (size["queries"] + size["gallery"]) * size["dim"] * 4 / 2**20
    lines = [f"# Exact top-k search on the CPU (Q = {size['queries']:,}, N = {size['gallery']:,}, "
             f"D = {size['dim']}, k = {size['k']})", "",
             f"- date: {datetime.date.today().isoformat()}",
             f"- machine: {cpu_name()}, {os.cpu_count()} cores; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} ({torch.get_num_threads()} torch threads)",
             f"- load average (1, 5, 15 min) before: {load[0]}; "
             f"after: {load[1]} (this run's own threads count in the second)",
             f"- {versions()}",
             f"- medians of {rounds} alternated rounds after one warm-up call each; random normal float32 rows; "
             f"inputs {inputs_mib:.1f} MiB",
             "",
             "| method | median (s) | vs product | peak beyond inputs (MiB) | against the exact top k |",
             "|---|---|---|---|---|"]
    for name, seconds in medians.items():
        lines.append(f"| {name} | {seconds:.4g} | {seconds / medians[PRODUCT]:.2f}x | {peaks[name]:.1f} | "
                     f"{checks[name]} |")
    lines += ["",
              f"Product and torch.topk take unit rows made beforehand, in chunks of {size['chunk']} queries; "
              "topk takes the raw rows, and its time and memory include validating them and their unit copies. "
              f"topk torch is timed on the first {size['torch_queries']} queries and scaled to all. "
              "faiss's index (a copy of the unit gallery) is built before the timing and within the memory "
              f"measurement. The exact top k: topk(backend=\"torch\") on the first {size['torch_queries']} queries."]
    return "\n".join(lines)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (as DRCL_BENCH_SIZE=tiny)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-queries", type=int, default=None, help="queries the torch backend is timed on")
    parser.add_argument("--out", default=None, help="markdown file to write the table to")


def run(args: argparse.Namespace) -> str:
    """The table, also written to --out."""
    size = dict(TINY if args.smoke or os.environ.get("DRCL_BENCH_SIZE") == "tiny" else FULL)
    if args.torch_queries:
        size["torch_queries"] = args.torch_queries
    load_before = load_average()
    q, g = make_inputs(size)
    medians, checks = timings(inputs(q, g, size), args.rounds, size["queries"] / size["torch_queries"])
    peaks = memory(q, g, size)
    text = render(size, medians, checks, peaks, args.rounds, (load_before, load_average()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    return peak_memory.main(argv, __doc__, options, child, run)


if __name__ == "__main__":
    sys.exit(main())
