"""Sharded MAP@all under torchrun against one process: wall time, peak memory per rank, bytes moved.

    .venv/bin/python bench/cpu/sharded_map.py            # Q = 2,000, N = 200,000, D = 128, 10 classes, 2 ranks
    .venv/bin/python bench/cpu/sharded_map.py --smoke    # tiny, seconds (the test suite runs it)

Random float32 embeddings (normal), single-label class ids. The parent writes them to
.npy files; every run is a fresh process (a child for one process, torchrun's workers
for the sharded runs) that loads what it holds (with --shard_gallery only its gallery
slice, through a memory map), evaluates once to load code paths, then measures one
evaluation: wall time (the slowest rank, from a barrier), peak resident memory the
evaluation added (peak_memory.py: the kernel's high-water mark) and the process's peak
(VmHWM, inputs and libraries included), and the payload of every collective (what this
rank hands in, and what it receives from the others). Linux only. Each row checks its MAP against the one-process value with ==.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import peak_memory
import repo_root  # noqa: F401 - tests.support


def _load(folder: Path, part: slice | None = None) -> list[np.ndarray]:
    """q, yq, g, yg; with `part`, only that slice of the gallery becomes resident."""
    arrays = [np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("q", "yq", "g", "yg")]
    if part is not None:
        arrays[2], arrays[3] = arrays[2][part], arrays[3][part]
    return [np.array(a) for a in arrays]  # resident copies, writable


def _measure(evaluate) -> dict:
    value, seconds, added = peak_memory.added_peak(evaluate)
    return {"map": value, "seconds": seconds, "added_mib": added, "peak_mib": peak_memory.status_kib("VmHWM") / 1024}


def single(folder: str) -> dict:
    import torch
    from drcl_fast.retrieval import evaluate_map
    q, yq, g, yg = _load(Path(folder))
    evaluate_map(q[:20], yq[:20], g[:50], yg[:50])  # load libraries and code paths first
    return {**_measure(lambda: evaluate_map(q, yq, g, yg)), "threads": torch.get_num_threads()}


class _Payload:
    """Counts the bytes of every collective of torch.distributed while installed."""

    def __init__(self):
        import torch.distributed as dist
        self.dist, self.sent, self.received, self.calls, self.seconds = dist, 0, 0, 0, 0.0
        self.originals = {name: getattr(dist, name) for name in ("all_gather", "reduce", "all_gather_object")}

    def __enter__(self) -> _Payload:
        import pickle
        dist, world = self.dist, self.dist.get_world_size()

        def all_gather(parts, tensor, *args, **kwargs):
            size = tensor.numel() * tensor.element_size()
            return self._timed("all_gather", size, (world - 1) * size, parts, tensor, *args, **kwargs)

        def reduce(tensor, *args, **kwargs):
            size = tensor.numel() * tensor.element_size()
            main = dist.get_rank() == dist.get_global_rank(kwargs["group"], kwargs["group_dst"])
            received = (world - 1) * size if main else 0
            return self._timed("reduce", 0 if main else size, received, tensor, *args, **kwargs)

        def all_gather_object(out, obj, *args, **kwargs):
            size = len(pickle.dumps(obj))
            return self._timed("all_gather_object", size, (world - 1) * size, out, obj, *args, **kwargs)
        dist.all_gather, dist.reduce, dist.all_gather_object = all_gather, reduce, all_gather_object
        return self

    def _timed(self, name: str, sent: int, received: int, *args, **kwargs):
        start = time.perf_counter()
        out = self.originals[name](*args, **kwargs)
        self.seconds += time.perf_counter() - start  # moving the bytes, and waiting for the other ranks
        self.sent, self.received, self.calls = self.sent + sent, self.received + received, self.calls + 1
        return out

    def __exit__(self, *exc) -> None:
        for name, fn in self.originals.items():
            setattr(self.dist, name, fn)


def rank_worker(folder: str, mode: str, out: str) -> None:
    import torch
    import torch.distributed
    from drcl_fast.retrieval import evaluate_map, shard_slice
    from drcl_fast.runtime import distributed
    shard = mode == "gallery"
    with distributed.process_group():
        total = len(np.load(Path(folder) / "g.npy", mmap_mode="r"))
        q, yq, g, yg = _load(Path(folder), shard_slice(total) if shard else None)
        evaluate_map(q[:20], yq[:20], g[:50], yg[:50], group="world", shard_gallery=shard)  # load code paths
        torch.distributed.barrier()
        with _Payload() as payload:
            result = _measure(lambda: evaluate_map(q, yq, g, yg, group="world", shard_gallery=shard))
        result.update(rank=distributed.rank(), threads=torch.get_num_threads(), sent=payload.sent,
                      received=payload.received, collectives=payload.calls, in_collectives=payload.seconds)
        Path(out, f"rank{distributed.rank()}.json").write_text(json.dumps(result))


def measure(queries: int, gallery: int, dim: int, classes: int, nproc: int, smoke: bool = False) -> list[dict]:
    from tests.support import run_torchrun   # here: the children need neither it nor pytest
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, array in (("q", rng.standard_normal((queries, dim), dtype=np.float32)),
                            ("yq", rng.integers(0, classes, queries)),
                            ("g", rng.standard_normal((gallery, dim), dtype=np.float32)),
                            ("yg", rng.integers(0, classes, gallery))):
            np.save(folder / f"{name}.npy", array)
        for threads in (nproc,) if smoke else (nproc, 1):
            result = peak_memory.in_child(__file__, tmp, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            rows.append({"run": "one process", "ranks": 1, **result, "sent": 0, "received": 0, "collectives": 0,
                         "in_collectives": 0.0})
        for mode in ("queries", "gallery"):
            out = folder / mode
            out.mkdir()
            done = run_torchrun([__file__, "--rank-worker", tmp, mode, str(out)], nproc=nproc, timeout=600, check=False)
            if done.returncode != 0:
                raise SystemExit(f"torchrun failed:\n{done.stdout}\n{done.stderr}")
            ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
            assert len({r["map"] for r in ranks}) == 1, ranks
            rows.append({"run": f"{mode} sharded", "ranks": nproc, "map": ranks[0]["map"],
                         "seconds": max(r["seconds"] for r in ranks), "threads": ranks[0]["threads"],
                         **{key: max(r[key] for r in ranks) for key in
                            ("added_mib", "peak_mib", "sent", "received", "collectives", "in_collectives")}})
    return rows


def table(rows: list[dict], shape: str) -> str:
    reference = rows[0]["map"]
    lines = [f"MAP@all, {shape}; per rank: the largest over ranks",
             "| run | ranks x threads | wall (s) | of it in collectives (s) | added peak per rank (MiB) | "
             "process peak per rank (MiB) | sent per rank (MiB) | received per rank (MiB) | collectives | MAP@all | "
             "== one process |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["run"], f"{r['ranks']} x {r['threads']}", f"{r['seconds']:.2f}", f"{r['in_collectives']:.2f}",
                 f"{r['added_mib']:.1f}", f"{r['peak_mib']:.1f}", f"{r['sent'] / 2**20:.2f}",
                 f"{r['received'] / 2**20:.2f}", str(r["collectives"]), repr(r["map"]), str(r["map"] == reference)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="Q = 40, N = 3,000, D = 16: a few seconds")
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rank-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(single(args.child)))
        return 0
    if args.rank_worker:
        rank_worker(*args.rank_worker)
        return 0
    if args.smoke:
        args.queries, args.gallery, args.dim = 40, 3_000, 16
    rows = measure(args.queries, args.gallery, args.dim, args.classes, args.nproc, smoke=args.smoke)
    print(table(rows, f"Q = {args.queries:,}, N = {args.gallery:,}, D = {args.dim}, {args.classes} classes"))
    return 0 if all(r["map"] == rows[0]["map"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
