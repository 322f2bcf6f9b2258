"""One rank of tests/retrieval/test_sharded_map.py: evaluates every case of a file under torchrun.

    torchrun --nproc_per_node N tests/retrieval/sharded_worker.py CASES.pt OUT_DIR

CASES.pt holds a list of dicts (torch.save): query, query_labels, gallery, gallery_labels,
k, backend, max_memory, shard_gallery, edges (world size -> gallery slice boundaries, rank
order), group ("world", True or "new": a ProcessGroup made here) and, for the error cases,
vary ("queries" or "width": this rank drops rank-many query rows or embedding columns).
Each rank writes OUT_DIR/rank{r}.json: per case the MAP and the APs (repr-exact floats,
NaN as NaN), or the error's type and message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from drcl_fast.errors import DRCLError
from drcl_fast.retrieval import evaluate_map
from drcl_fast.runtime import distributed


def evaluate(case: dict, rank: int, world: int, groups: dict) -> dict:
    q, yq, g, yg = case["query"], case["query_labels"], case["gallery"], case["gallery_labels"]
    if case.get("vary") == "queries":
        q, yq = q[:len(q) - rank], yq[:len(yq) - rank]
    elif case.get("vary") == "width":
        q, g = q[:, :q.shape[1] - rank], g[:, :g.shape[1] - rank]
    if case["shard_gallery"]:
        edges = case["edges"][world]
        g, yg = g[edges[rank]:edges[rank + 1]], yg[edges[rank]:edges[rank + 1]]
    try:
        value, ap = evaluate_map(q, yq, g, yg, k=case["k"], backend=case["backend"], return_ap=True,
                                 max_memory=case["max_memory"], group=groups[case["group"]],
                                 shard_gallery=case["shard_gallery"])
    except DRCLError as error:
        return {"error": [type(error).__name__, str(error)]}
    return {"map": value, "ap": ap.tolist()}


def main(cases_path: str, out_dir: str) -> None:
    cases = torch.load(cases_path, weights_only=True)
    with distributed.process_group():
        rank, world = distributed.rank(), distributed.world_size()
        groups = {"world": "world", True: True, "new": dist.new_group(list(range(world)))}
        results = [evaluate(case, rank, world, groups) for case in cases]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
