"""Exact top-k search (drcl_fast.retrieval.topk): every backend against a brute force, bit for bit.

The brute force scores the whole product with reference.chunk_scores and orders each row
with numpy's stable argsort of the negated scores (ties by lower index), so that neither
the blocking under test nor torch.sort decides an order. The Triton functions run on
CPU tensors under TRITON_INTERPRET=1 (conftest), where one tl.sort costs a fraction of a
second: their cases stay tiny. faiss is the optional `faiss` extra.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from drcl_fast.errors import BackendError, ConfigError, DataError
from drcl_fast.retrieval import cpp, reference, topk
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.retrieval.sharded import SCORE_ALIGN
from drcl_fast.runtime import selfcheck

from drcl_fast.retrieval import nearest as search
from tests.test_bench_smoke import run   # a script from the repository root, its exit status checked

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # where the Triton functions run (CPU: the interpreter)
needs_cpp = pytest.mark.skipif(not cpp.AVAILABLE, reason="drcl_fast.retrieval._map_cpp is not built here")
needs_triton = pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")
EXACT_BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp)]
BITS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def brute_force(queries, gallery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) of each query's k best items: the whole product, a stable argsort."""
    q, g = (torch.as_tensor(x) for x in (queries, gallery))
    q, g = reference.unit_rows(*(x if x.dtype == torch.float64 else x.float() for x in (q, g)))
    scores = reference.chunk_scores(q, g).numpy()
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def assert_exact(found: tuple[torch.Tensor, torch.Tensor], expected: tuple[np.ndarray, np.ndarray]) -> None:
    scores, indices = (x.cpu().numpy() for x in found)
    assert indices.dtype == np.int64 and scores.dtype == expected[0].dtype
    np.testing.assert_array_equal(indices, expected[1])
    bits = BITS[scores.dtype]
    np.testing.assert_array_equal(scores.view(bits), expected[0].view(bits))  # the very bits, -0.0 included


def bits(scores: torch.Tensor) -> torch.Tensor:
    return scores.view(torch.int32 if scores.dtype == torch.float32 else torch.int64)


def real_rows(seed: int, num_queries: int, gallery_size: int, dim: int = 33, dtype=np.float32):
    """Random rows with exact duplicates of gallery item 0 spread over the gallery (so over the
    cpp backend's blocks), and query 0 pointing at it: real-valued scores that tie exactly."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((num_queries, dim)).astype(dtype)
    g = rng.standard_normal((gallery_size, dim)).astype(dtype)
    g[np.unique(np.linspace(0, gallery_size - 1, 9).astype(int))] = g[0]
    q[0] = g[0]
    return q, g


def exact_rows(generator: torch.Generator, rows: int, dim: int = 16) -> torch.Tensor:
    """+-1 entries times a power of two: unit rows of +-1/4, so every cosine is a multiple of 1/16,
    exact in any summation order, and ties abound."""
    signs = torch.randint(0, 2, (rows, dim), generator=generator).float() * 2 - 1
    return signs * 2.0 ** torch.randint(-2, 3, (rows, 1), generator=generator).float()


# ---------------------------------------------------------------- the exactness the blocking rests on

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_queries,gallery_size,dim", [
    (1, 20011, 128), (15, 8193, 37), (17, 20011, 64), (257, 8193, 7), (40, 5000, 512), (16, 1, 5), (3, 7, 5)])
def test_blocks_and_chunks_give_the_whole_products_bits(dtype, num_queries, gallery_size, dim):
    """What search_cpp computes, block by block, equals chunk_scores of all queries against the whole
    gallery in every bit; a blocking that broke the rule (an unaligned start, a narrow last block)
    or a float64 chunking that moved rows within BLAS's row blocks would fail here."""
    generator = torch.Generator().manual_seed(num_queries + gallery_size)
    q, g = reference.unit_rows(torch.randn(num_queries, dim, generator=generator, dtype=dtype),
                               torch.randn(gallery_size, dim, generator=generator, dtype=dtype))
    whole = reference.chunk_scores(q, g)
    for rows in (5, 16, 100):
        for width in (SCORE_ALIGN, 2 * SCORE_ALIGN, 21 * SCORE_ALIGN):
            for start, stop in search.query_chunks(num_queries, rows, dtype):
                chunk = search._padded(q[start:stop])
                for low, high in search.gallery_blocks(gallery_size, width):
                    block = torch.empty(chunk.shape[0], high - low, dtype=dtype)
                    torch.mm(chunk, g[low:high].T, out=block)
                    assert torch.equal(bits(block[:stop - start]), bits(whole[start:stop, low:high])), \
                        (rows, width, start, low)


def test_chunk_and_block_rules():
    assert search.gallery_blocks(10, SCORE_ALIGN) == [(0, 10)]
    last = 2 * SCORE_ALIGN + 5  # a 5-item remainder joins the block before
    assert search.gallery_blocks(last, SCORE_ALIGN) == [(0, SCORE_ALIGN), (SCORE_ALIGN, last)]
    assert search.gallery_blocks(2 * SCORE_ALIGN, SCORE_ALIGN) == [(0, SCORE_ALIGN), (SCORE_ALIGN, 2 * SCORE_ALIGN)]
    assert search.query_chunks(257, 256, torch.float32) == [(0, 257)]  # one row alone would be padded
    assert search.query_chunks(300, 256, torch.float32) == [(0, 256), (256, 300)]
    assert search.query_chunks(100, 5, torch.float64) == [(0, 48), (48, 100)]  # whole multiples of ROW_ALIGN


def test_an_unaligned_blocking_would_change_bits_here():
    """Shows that the test above has teeth on this machine's BLAS: blocks of 1,000 items leave an
    11-item product at the end, whose float32 sums differ from the whole product's."""
    generator = torch.Generator().manual_seed(3)
    q, g = reference.unit_rows(torch.randn(15, 37, generator=generator), torch.randn(20011, 37, generator=generator))
    whole = reference.chunk_scores(q, g)
    changed = sum(int((reference.chunk_scores(q, g[low:low + 1000]) != whole[:, low:low + 1000]).sum())
                  for low in range(0, 20011, 1000))
    if changed == 0:
        pytest.skip("this BLAS sums narrow products as wide ones: nothing to show")
    assert changed > 0


# ---------------------------------------------------------------- every exact backend against the brute force

@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("num_queries,gallery_size", [
    (1, 1), (15, 7), (17, 8193), (257, 20011), (1, 20011), (257, 7), (15, 8193), (17, 1)])
def test_matches_brute_force_at_odd_sizes(backend, num_queries, gallery_size):
    q, g = real_rows(num_queries * 7 + gallery_size, num_queries, gallery_size)
    for k in sorted({1, min(10, gallery_size), gallery_size}):
        assert_exact(topk(q, g, k, backend=backend), brute_force(q, g, k))


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_exact_ties_rank_by_gallery_index(backend):
    generator = torch.Generator().manual_seed(5)
    q, g = exact_rows(generator, 17), exact_rows(generator, 3000)  # 17 possible scores: ties everywhere
    for k in (1, 10, 1000):
        scores, indices = topk(q, g, k, backend=backend, max_memory=2**16)  # several blocks / chunks
        assert_exact((scores, indices), brute_force(q, g, k))
    tied = scores[:, 1:] == scores[:, :-1]
    assert bool(tied.any()) and bool((indices[:, 1:][tied] > indices[:, :-1][tied]).all())


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_float64_and_mixed_inputs_rank_in_float64(backend):
    q, g = real_rows(6, 257, 8193, dtype=np.float64)
    for max_memory in (None, 2**18):  # 2**18: several query chunks (torch) and gallery blocks (cpp)
        found = topk(q, g, 10, backend=backend, max_memory=max_memory)
        assert found[0].dtype == torch.float64
        assert_exact(found, brute_force(q, g, 10))
    mixed = topk(q.astype(np.float32), g, 5, backend=backend)
    assert mixed[0].dtype == torch.float64
    assert_exact(mixed, brute_force(q.astype(np.float32), g, 5))  # normalised in float32, then promoted


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_a_small_max_memory_chunks_and_changes_nothing(backend):
    q, g = real_rows(7, 40, 5000)
    tiny = 2**14
    if backend == "torch":
        step = reference.auto_chunk_size(40, 5000, tiny, search._SORT_BYTES_PER_PAIR[torch.float32])
        assert len(search.query_chunks(40, step, torch.float32)) > 1
    else:
        assert len(search.gallery_blocks(5000, search._cpp_tile(40, torch.float32, tiny)[1])) > 1
    assert_exact(topk(q, g, 10, backend=backend, max_memory=tiny), brute_force(q, g, 10))


@needs_cpp
def test_auto_takes_cpp_on_the_cpu_and_accepts_tensors_and_low_precision():
    q, g = real_rows(8, 15, 900)
    assert_exact(topk(torch.from_numpy(q), torch.from_numpy(g), 3), brute_force(q, g, 3))
    half_q, half_g = torch.from_numpy(q).half(), torch.from_numpy(g).half()
    assert_exact(topk(half_q, half_g, 4, backend="cpp"), brute_force(half_q.float(), half_g.float(), 4))
    assert topk(q, g, np.int64(2))[1].shape == (15, 2)


# ---------------------------------------------------------------- triton (interpreter on the CPU)

@needs_triton
def test_triton_matches_brute_force_on_exact_ties():
    generator = torch.Generator().manual_seed(9)
    for num_queries, gallery_size, k in ((1, 1, 1), (3, 40, 5), (17, 40, 16), (3, 40, 20)):
        q, g = exact_rows(generator, num_queries), exact_rows(generator, gallery_size)
        scores, indices = topk(q.to(DEVICE), g.to(DEVICE), k, backend="triton")
        expected = brute_force(q, g, k)
        assert scores.device.type == DEVICE
        np.testing.assert_array_equal(indices.cpu().numpy(), expected[1])
        np.testing.assert_array_equal(scores.cpu().numpy(), expected[0])  # decoded from the kernel's keys
        if k == 20:
            assert bool((scores < 0).any())  # negative scores decode too


@needs_triton
def test_triton_falls_back_to_the_sort_path_beyond_its_kernel():
    generator = torch.Generator().manual_seed(10)
    q, g = exact_rows(generator, 5), exact_rows(generator, 300)
    assert_exact(topk(q.to(DEVICE), g.to(DEVICE), 129, backend="triton"), brute_force(q, g, 129))
    q64, g64 = q.double(), g.double()
    assert_exact(topk(q64.to(DEVICE), g64.to(DEVICE), 7, backend="triton", max_memory=1), brute_force(q64, g64, 7))


@needs_triton
def test_the_kernels_launcher_still_serves_map_and_the_probe_passes():
    from drcl_fast.kernels import map_topk
    generator = torch.Generator().manual_seed(11)
    q, g = reference.unit_rows(exact_rows(generator, 3).to(DEVICE), exact_rows(generator, 40).to(DEVICE))
    scores, indices = map_topk.topk(q, g, 9)
    assert torch.equal(map_topk.topk_indices(q, g, 9), indices)
    assert "topk" in selfcheck.probes()
    selfcheck.reset()
    found = selfcheck.verdict("topk", torch.device(DEVICE))
    assert found is not None and found.ok, found


# ---------------------------------------------------------------- bad inputs and the dispatch

@pytest.mark.parametrize("queries,gallery,k,error,message", [
    (np.eye(3), np.eye(3), 0, ConfigError, r"k must be between 1 and the gallery size 3, got k=0; pass a k"),
    (np.eye(3), np.eye(3), 4, ConfigError, r"k must be between 1 and the gallery size 3, got k=4"),
    (np.eye(3), np.eye(3), 1.5, ConfigError, r"k must be an int between 1 and the gallery size 3, got 1.5"),
    (np.eye(3), np.eye(3), True, ConfigError, r"k must be an int"),
    (np.array([[1.0, np.nan], [0, 1], [1, 1]]), np.eye(2), 1, DataError,
     r"queries has NaN or infinite values in 1 of its 3 rows; fix or drop"),
    (np.eye(3), np.full((2, 3), np.inf), 1, DataError, r"gallery has NaN or infinite values in 2 of its 2 rows"),
    (np.ones((2, 4)), np.ones((3, 5)), 1, DataError,
     r"query embeddings have width 4 but gallery embeddings have width 5"),
    (np.ones(4), np.ones((3, 4)), 1, DataError,
     r"queries must be a 2-D \(n, d\) array of embeddings, got shape \(4,\)"),
    (np.ones((2, 4)), np.ones((0, 4)), 1, DataError, r"gallery has no rows"),
])
def test_bad_inputs_are_refused_with_what_to_do(queries, gallery, k, error, message):
    for backend in ("torch", "auto"):
        with pytest.raises(error, match=message):
            topk(queries, gallery, k, backend=backend)


def test_unknown_and_unusable_backends(monkeypatch):
    with pytest.raises(BackendError, match="unknown backend 'gpu'"):
        topk(np.eye(2), np.eye(2), 1, backend="gpu")
    monkeypatch.setattr(cpp, "AVAILABLE", False)
    with pytest.raises(BackendError, match="topk: backend 'cpp' is not available here"):
        topk(np.eye(2), np.eye(2), 1, backend="cpp")


@needs_cpp
def test_the_cpp_merge_checks_its_inputs_and_keeps_ties_in_index_order():
    from drcl_fast.retrieval import _map_cpp
    best, where = np.full((2, 3), -np.inf, np.float32), np.full((2, 3), -1, np.int64)
    # Two blocks in gallery order; row 0 ties at 0.5 across them, row 1 fills from both.
    _map_cpp.topk_merge(np.array([[0.5, 0.1], [0.2, 0.3]], np.float32), 0, best, where, 1)
    _map_cpp.topk_merge(np.array([[0.5, 0.9, 0.5], [0.1, 0.4, 0.3]], np.float32), 2, best, where, 2)
    _map_cpp.topk_sort(best, where, 1)
    assert best.tolist() == [[0.8999999761581421, 0.5, 0.5], [0.4000000059604645, 0.30000001192092896,
                                                              0.30000001192092896]]
    assert where.tolist() == [[3, 0, 2], [3, 1, 4]]
    block = np.zeros((2, 4), np.float32)
    cases = [
        ((block[:, ::2], 0, best, where, 1), "scores must be C-contiguous"),
        ((block.astype(np.int32), 0, best, where, 1), "scores must be float32 or float64"),
        ((block.astype(np.float64), 0, best, where, 1), "best_scores must have the scores' dtype"),
        ((np.zeros(4, np.float32), 0, best, where, 1), "scores must be a 2-D"),
        ((block, -1, best, where, 1), "offset .* must be >= 0"),
        ((block, 0, best, where, 0), "threads must be >= 1"),
        ((block[:1], 0, best, where, 1), r"best_scores must have shape \(1, 3\), got \(2, 3\)"),
        ((block, 0, best, where.astype(np.int32), 1), "best_indices must be int64"),
        ((block, 0, best, where[:, :2].copy(), 1), r"best_indices must have shape \(2, 3\), got \(2, 2\)"),
        ((block, 0, np.asfortranarray(np.zeros((2, 3), np.float32)), where, 1), "writeable C-contiguous"),
    ]
    read_only = best.copy()
    read_only.flags.writeable = False
    cases.append(((block, 0, read_only, where, 1), "writeable C-contiguous array"))
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            _map_cpp.topk_merge(*args)
    with pytest.raises(ValueError, match="best_scores must be float32 or float64"):
        _map_cpp.topk_sort(where.astype(np.int32), where, 1)


# ---------------------------------------------------------------- faiss (approximate search, optional extra)

def clustered(seed: int, num_queries: int, gallery_size: int, dim: int = 32, clusters: int = 30):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    pick = lambda n: centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))  # noqa: E731
    return pick(num_queries).astype(np.float32), pick(gallery_size).astype(np.float32)


def test_faiss_flat_equals_exact_and_hnsw_finds_most():
    pytest.importorskip("faiss")
    q, g = clustered(12, 60, 3000)
    exact_scores, exact = topk(q, g, 10, backend="torch")
    scores, indices = search.approximate_topk(q, g, 10, index="flat")
    assert indices.dtype == torch.int64 and scores.dtype == torch.float32
    assert torch.equal(indices, exact)  # random data: no ties, nor near-ties faiss's own sums could swap
    torch.testing.assert_close(scores, exact_scores, rtol=0, atol=1e-6)
    hnsw = search.approximate_topk(q, g, 10)[1]
    assert search.recall_at_k(hnsw, exact) > 0.9
    assert search.recall_at_k(search.approximate_topk(q, g, 10, index="ivf")[1], exact) > 0.5
    assert search.recall_at_k(search.approximate_topk(q, g, 10, index="hnsw", M=8, ef_search=16)[1], exact) > 0.2


def test_faiss_errors_say_what_to_do(monkeypatch):
    pytest.importorskip("faiss")
    with pytest.raises(ConfigError, match="index must be one of flat, hnsw, ivf, got 'lsh'"):
        search.approximate_topk(np.eye(2), np.eye(2), 1, index="lsh")
    with pytest.raises(ConfigError, match="index 'hnsw' takes M, ef_construction, ef_search; got nprobe"):
        search.approximate_topk(np.eye(2), np.eye(2), 1, nprobe=3)
    with pytest.raises(ConfigError, match="k must be between 1 and the gallery size 2"):
        search.approximate_topk(np.eye(2), np.eye(2), 3, index="flat")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ConfigError, match=r"needs faiss: pip install \"drcl_fast\[faiss\]\""):
        search.approximate_topk(np.eye(2), np.eye(2), 1)


def test_recall_at_k():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert search.recall_at_k(exact, exact) == 1.0
    assert search.recall_at_k(np.array([[2, 9, 0], [-1, -1, -1]]), exact) == pytest.approx(2 / 6)
    with pytest.raises(DataError, match="same Q"):
        search.recall_at_k(exact[:1], exact)


# ---------------------------------------------------------------- the benchmarks, at tiny sizes

def test_search_benchmark_smoke(tmp_path):
    out = tmp_path / "search.md"
    text = run("bench/cpu/search.py", "--smoke", "--out", str(out), env={"TRITON_INTERPRET": "1"})
    table = out.read_text()
    assert table in text or table.strip() in text
    for row in ("| product q @ g.T |", "| torch.topk over the product |", "| topk cpp |", "| topk torch |"):
        assert row in table, table
    assert "OMP_NUM_THREADS" in table and "FAIL" not in table


@needs_triton
def test_gpu_suite_search_section_smoke():
    out = run("bench/gpu/gpu_suite.py", "--smoke", "--only", "gpu_search", env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_search |")]
    assert len(rows) >= 3 and "FAIL" not in out and "| ok |" in rows[0], out
