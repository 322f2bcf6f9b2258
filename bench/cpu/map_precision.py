"""How often real-valued scores reorder items between backends and precisions, and what it does to MAP.

    .venv/bin/python bench/cpu/map_precision.py [--size 5000]

On exactly representable inputs every backend ranks identically (the tests show
it); on real-valued embeddings two computations of "the same" cosine can differ
in the last bits and swap near-ties. Compared here, per query's AP and overall
MAP, on the synthetic NUS-WIDE-like sets (D = 512):
- cpp against torch, both float32 (both rank torch.mm scores, in different chunks);
- float64, float16 and bfloat16 embeddings against float32 (the reference).
The GPU suite (bench/gpu/gpu_map.py) adds the fused Triton kernel against torch.mm.
"""
from __future__ import annotations

import argparse
import sys

import torch

import repo_root  # noqa: F401 - bench.shared
from bench.shared.ap_changes import compare
from drcl_fast.data.synthetic import make_retrieval_set
from drcl_fast.retrieval import cpp, reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5_000, help="queries = gallery items")
    args = parser.parse_args(argv)
    print("| labels | MAP@ | compared | queries reordered (AP moves > 1e-12) | max AP difference | MAP difference |")
    print("|---|---|---|---|---|---|")
    for labels, preset in [("single10", "nus-wide-single"), ("multi21", "nus-wide")]:
        data = make_retrieval_set(preset, 512, num_queries=args.size, gallery_size=args.size, seed=0)
        yq, yg = data.query_labels, data.gallery_labels
        for k in [None, 50]:
            expected = reference.average_precisions(data.query, yq, data.gallery, yg, k=k)
            rows = []
            if cpp.AVAILABLE:
                rows.append(("cpp float32 vs torch float32", cpp.average_precisions(data.query, yq, data.gallery, yg, k=k)))
            for dtype in (torch.float64, torch.float16, torch.bfloat16):
                # Embeddings stored in `dtype`; float16/bfloat16 are ranked in float32, float64 in float64.
                got = reference.average_precisions(data.query.to(dtype), yq, data.gallery.to(dtype), yg, k=k)
                rows.append((f"{str(dtype)[6:]} embeddings vs float32", got))
            for name, got in rows:
                print(f"| {labels} | {k or 'all'} | {name} | {compare(got, expected)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
