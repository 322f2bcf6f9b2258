"""MAP evaluation on the CPU: the released algorithm, the reference and `cpp`, side by side.

    OMP_NUM_THREADS=2 .venv/bin/python -m pytest bench/cpu/bench_map.py --benchmark-json=bench/results/map_cpu.json
    .venv/bin/python bench/cpu/map_table.py bench/results/map_cpu.json --memory > bench/results/map_cpu.md

Q = N = 5,000, D = 512, synthetic NUS-WIDE-like embeddings, single-label (10
classes) and multi-label (21). `DRCL_BENCH_SIZE=tiny` runs the same cases at
Q = N = 200 (the test suite does, with --benchmark-disable). Every case checks
that its MAP equals the reference's before it is timed.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from drcl_fast.data.synthetic import make_retrieval_set
from drcl_fast.retrieval import cpp, evaluate_map, reference
from released_map import released_map

SIZE = 200 if os.environ.get("DRCL_BENCH_SIZE") == "tiny" else 5_000
DIM = 512
LABELS = {"single10": "nus-wide-single", "multi21": "nus-wide"}
# The released per-item loop takes many seconds at full size: fewer rounds.
ROUNDS = {"released": 3}


@pytest.fixture(scope="module", params=list(LABELS))
def data(request):
    synthetic = make_retrieval_set(LABELS[request.param], DIM, num_queries=SIZE, gallery_size=SIZE, seed=0)
    reference_map = {k: evaluate_map(synthetic.query, synthetic.query_labels, synthetic.gallery,
                                     synthetic.gallery_labels, k=k, backend="torch") for k in (None, 50)}
    return request.param, synthetic, reference_map


def run(benchmark, fn, name, labels, extra):
    benchmark.group = f"{labels} Q=N={SIZE} D={DIM}"
    benchmark.extra_info.update(labels=labels, impl=name, size=SIZE, dim=DIM, threads=torch.get_num_threads(), **extra)
    return benchmark.pedantic(fn, rounds=ROUNDS.get(name, 7), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("k", [None, 50], ids=["all", "at50"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_evaluate_map(benchmark, data, backend, k):
    if backend == "cpp" and not cpp.AVAILABLE:
        pytest.skip("drcl_fast.retrieval._map_cpp is not built")
    labels, d, expected = data
    value = run(benchmark, lambda: evaluate_map(d.query, d.query_labels, d.gallery, d.gallery_labels, k=k,
                                                backend=backend),
                f"{backend}{'' if k is None else f'@{k}'}", labels, {})
    assert value == pytest.approx(expected[k], abs=1e-6)
    benchmark.extra_info["map"] = value


def test_released_algorithm(benchmark, data):
    labels, d, expected = data
    args = [np.asarray(t) for t in (d.query, d.query_labels, d.gallery, d.gallery_labels)]
    value = run(benchmark, lambda: released_map(*args), "released", labels, {})
    # float64 distances may order near-ties differently from the float32 scores we rank.
    assert value == pytest.approx(expected[None], abs=1e-4)
    benchmark.extra_info.update(map=value, map_difference=value - expected[None])


def test_similarity_product_alone(benchmark, data):
    """The floor for MAP@all: the float32 product of unit rows, nothing else."""
    labels, d, _ = data
    q, g = reference.unit_rows(d.query, d.gallery)
    scores = run(benchmark, lambda: q @ g.T, "matmul", labels, {})
    assert scores.shape == (SIZE, SIZE)
