"""Every MAP backend against the reference and an independent brute force; PR curves.

The Triton functions run on CPU tensors under TRITON_INTERPRET=1 (set by conftest
when there is no GPU), where one tl.sort costs a fraction of a second: their
cases stay at a handful of queries and a few dozen gallery items.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from drcl_fast.errors import BackendError, ConfigError, DataError
from drcl_fast.retrieval import cpp, evaluate_directions, evaluate_map, reference
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.retrieval.labels import encode, pack_bits
from drcl_fast.retrieval.pr import default_cutoffs, plot_curves, precision_recall, save_curves_csv
from drcl_fast.runtime import backends

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # where the Triton functions run (CPU: the interpreter)
needs_cpp = pytest.mark.skipif(not cpp.AVAILABLE, reason="drcl_fast.retrieval._map_cpp is not built here")
needs_triton = pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")


# ---------------------------------------------------------------- an independent brute force

def counted_ranks(query, query_labels, gallery, gallery_labels, multilabel):
    """Per query, the sorted ranks of its relevant items, by counting: item j's rank is
    1 + the items scored above it + the equal-scored items with a lower index.
    float64 scores, plain loops; no sort decides an order."""
    q = np.asarray(query, np.float64)
    g = np.asarray(gallery, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    out = []
    for i in range(len(q)):
        scores = g @ q[i]
        if multilabel:
            relevant = [bool(np.any(np.logical_and(query_labels[i], row))) for row in gallery_labels]
        else:
            relevant = [query_labels[i] == y for y in gallery_labels]
        out.append(sorted(1 + int(np.sum(scores > scores[j])) + int(np.sum(scores[:j] == scores[j]))
                          for j in range(len(g)) if relevant[j]))
    return out


def ap_from_ranks(ranks, k, multilabel):
    """AP@k (k=None: all) from the definition: mean over relevant items within k of hits / rank."""
    aps = []
    for query_ranks in ranks:
        kept = [r for r in query_ranks if k is None or r <= k]
        aps.append(sum((n + 1) / r for n, r in enumerate(kept)) / len(kept) if kept
                   else (math.nan if multilabel else 0.0))
    return np.array(aps)


def exact_rows(rng: np.random.Generator, n: int, d: int = 4) -> np.ndarray:
    """+-1 entries times a power of two, some rows zero: cosines are multiples of 1/d,
    the same in every precision and summation order, and exact ties abound."""
    x = rng.choice([-1.0, 1.0], size=(n, d)) * 2.0 ** rng.integers(-3, 4, size=(n, 1))
    x[rng.random(n) < 0.1] = 0.0
    return x.astype(np.float32)


def random_labels(rng: np.random.Generator, n: int, classes: int, multilabel: bool) -> np.ndarray:
    if multilabel:
        return (rng.random((n, classes)) < min(0.5, 1.5 / classes)).astype(np.float32)  # some rows empty
    return rng.integers(0, classes, size=n)


def case(seed: int, num_queries: int, gallery_size: int, classes: int, multilabel: bool):
    rng = np.random.default_rng(seed)
    q, g = exact_rows(rng, num_queries), exact_rows(rng, gallery_size)
    g[gallery_size // 2:] = g[:gallery_size - gallery_size // 2]  # duplicates: ties decided by index
    return (q, random_labels(rng, num_queries, classes, multilabel),
            g, random_labels(rng, gallery_size, classes, multilabel))


def assert_same_ap(got, expected, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float64).cpu(),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=atol, equal_nan=True)


def on(device, *arrays):
    return [torch.as_tensor(np.asarray(a)).to(device) for a in arrays]


# ---------------------------------------------------------------- cpp

@needs_cpp
@pytest.mark.parametrize("multilabel,classes", [(False, 3), (False, 40), (True, 3), (True, 70), (True, 200)])
@pytest.mark.parametrize("num_queries,gallery_size", [(1, 1), (3, 2), (6, 5), (20, 57), (30, 200)])
def test_cpp_matches_brute_force_and_reference(multilabel, classes, num_queries, gallery_size):
    q, yq, g, yg = case(num_queries * 1000 + gallery_size + classes, num_queries, gallery_size, classes, multilabel)
    ranks = counted_ranks(q, yq, g, yg, multilabel)
    for k in [None, 1, 2, 7, gallery_size, gallery_size + 5, 1000]:
        expected = ap_from_ranks(ranks, k, multilabel)
        got = cpp.average_precisions(q, yq, g, yg, k=k)
        assert got.dtype == torch.float64
        assert_same_ap(got, expected)
        assert_same_ap(got, reference.average_precisions(q, yq, g, yg, k=k))


@needs_cpp
def test_cpp_ranks_float64_and_real_valued_scores_like_the_reference():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(30, 16)), rng.normal(size=(400, 16))
    q[:, ::2] = np.round(q[:, ::2])  # mixed: continuous values and exact ties
    g[200:] = g[:200]
    yq, yg = rng.integers(0, 5, 30), rng.integers(0, 5, 400)
    for dtype in [np.float64, np.float32]:
        for k in [None, 10]:
            assert_same_ap(cpp.average_precisions(q.astype(dtype), yq, g.astype(dtype), yg, k=k),
                           reference.average_precisions(q.astype(dtype), yq, g.astype(dtype), yg, k=k))


@needs_cpp
@pytest.mark.parametrize("gallery_size", [6, 40])  # k = 2 of 40: the selection path; else the radix sort
def test_cpp_one_score_throughout_ranks_by_index(gallery_size):
    # Every cosine is equal (all rows identical): the ranking is the gallery order.
    g = np.ones((gallery_size, 3), np.float32)
    yg = np.resize([0, 1, 1, 0, 1, 0], gallery_size)
    for k in [None, 2]:
        expected = ap_from_ranks([[r + 1 for r in range(gallery_size) if yg[r] == 1]], k, False)
        assert_same_ap(cpp.average_precisions(np.ones((1, 3)), [1], g, yg, k=k), expected)


@needs_cpp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpp_negative_zero_ties_with_zero(dtype):
    from drcl_fast.retrieval import _map_cpp
    # -0.0 and 0.0 compare equal, so they tie and rank by index, on both ranking paths.
    row = np.array([-0.0, 0.0, -0.0, 0.5, -0.25, 0.0] + [-1.0] * 42, dtype=dtype)
    labels = np.zeros(48, np.int64)
    labels[[2, 3]] = 1  # rank order 3, 0, 1, 2, 5, 4, ...: relevant at ranks 1 and 4
    for top in [48, 5]:
        got = _map_cpp.average_precisions(row[None], np.ones(1, np.int64), labels, top, False, 1)
        assert_same_ap(got, [(1 / 1 + 2 / 4) / 2])


@needs_cpp
@pytest.mark.parametrize("multilabel", [False, True])
def test_cpp_chunking_and_threads_do_not_change_results(multilabel, monkeypatch):
    q, yq, g, yg = case(5, 37, 60, 4, multilabel)
    whole = cpp.average_precisions(q, yq, g, yg)
    assert_same_ap(cpp.average_precisions(q, yq, g, yg, max_memory=1), whole, atol=0)  # one query per chunk
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert_same_ap(cpp.average_precisions(q, yq, g, yg), whole, atol=0)


@needs_cpp
def test_cpp_extension_rejects_inconsistent_arrays():
    from drcl_fast.retrieval import _map_cpp
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="one row per score column"):
        _map_cpp.average_precisions(scores, np.zeros(2, np.int64), np.zeros(4, np.int64), 3, False, 1)
    with pytest.raises(ValueError, match="top must be"):
        _map_cpp.average_precisions(scores, np.zeros(2, np.int64), np.zeros(3, np.int64), 4, False, 1)
    with pytest.raises(ValueError, match="1-D class codes or both 2-D label masks"):
        _map_cpp.average_precisions(scores, np.zeros(2, np.int64), np.zeros((3, 1), np.int64), 3, False, 1)
    with pytest.raises(ValueError, match="increase strictly"):
        _map_cpp.hits_at(scores, np.zeros(2, np.int64), np.zeros(3, np.int64), np.array([2, 2]), 1)


# ---------------------------------------------------------------- triton (interpreter on the CPU)

@needs_triton
@pytest.mark.parametrize("multilabel,classes,num_queries,gallery_size", [
    (False, 3, 1, 1), (False, 3, 5, 3), (True, 3, 5, 3), (False, 3, 9, 40), (True, 70, 9, 40)])
def test_triton_matches_brute_force_and_reference(multilabel, classes, num_queries, gallery_size):
    q, yq, g, yg = case(num_queries * 100 + gallery_size + classes, num_queries, gallery_size, classes, multilabel)
    args = on(DEVICE, q, yq, g, yg)
    # 1 and 20: the fused top-k kernel (slices of 16 items, merged); None and 129: the sort path.
    ranks = counted_ranks(q, yq, g, yg, multilabel)
    for k in [None, 1, 20, 129]:
        expected = ap_from_ranks(ranks, k, multilabel)
        got = triton_backend.average_precisions(*args, k=k)
        assert got.device.type == DEVICE and got.dtype == torch.float64
        assert_same_ap(got, expected)


@needs_triton
def test_triton_sort_path_chunks_and_float64():
    q, yq, g, yg = case(11, 12, 50, 4, True)
    whole = reference.average_precisions(q, yq, g, yg)
    assert_same_ap(triton_backend.average_precisions(*on(DEVICE, q, yq, g, yg), max_memory=1), whole)
    q64, g64 = q.astype(np.float64), g.astype(np.float64)  # float64 ranks on the sort path at any k
    assert_same_ap(triton_backend.average_precisions(*on(DEVICE, q64, yq, g64, yg), k=5),
                   reference.average_precisions(q64, yq, g64, yg, k=5))


@needs_triton
def test_triton_fused_topk_keeps_ties_in_index_order():
    from drcl_fast.kernels import map_topk
    # 40 gallery items, all tied but for two, spread over three slices of 16.
    gallery = torch.zeros(40, 16)
    gallery[:, 0] = 1.0
    gallery[33, 1] = 1.0  # cosine 1/sqrt(2) to the query: last
    gallery[17] = torch.full((16,), 1.0)  # cosine 1/4: below the ties
    query = torch.zeros(3, 16)
    query[:, 0] = 1.0
    got = map_topk.topk_indices(torch.nn.functional.normalize(query.to(DEVICE), dim=1),
                                torch.nn.functional.normalize(gallery.to(DEVICE), dim=1), 20)
    expected = [i for i in range(40) if i not in (17, 33)][:20]
    assert got.cpu().tolist() == [expected] * 3


@pytest.mark.skipif(not CUDA, reason="the triton backend dispatches only for CUDA tensors")
def test_triton_through_evaluate_map_on_cuda():
    q, yq, g, yg = case(12, 50, 300, 5, True)
    for k in [None, 50]:
        assert evaluate_map(*on("cuda", q, yq, g, yg), k=k, backend="triton") == pytest.approx(
            evaluate_map(q, yq, g, yg, k=k, backend="torch"), abs=1e-12)


# ---------------------------------------------------------------- dispatch, dtypes, fallback

@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_rank_in_float32(dtype):
    q, yq, g, yg = case(13, 12, 15, 3, False)  # exactly representable in every dtype
    expected = evaluate_map(q, yq, g, yg, backend="torch")
    assert evaluate_map(torch.from_numpy(q).to(dtype), yq, torch.from_numpy(g).to(dtype), yg,
                        backend="cpp") == pytest.approx(expected, abs=1e-12)


@needs_cpp
def test_auto_uses_cpp_on_the_cpu_and_directions_agree():
    names = ["a", "b", "c"]
    rng = np.random.default_rng(14)
    embeddings = [exact_rows(rng, n) for n in (9, 11, 13)]
    labels = [random_labels(rng, n, 3, False) for n in (9, 11, 13)]
    for k in [None, 4]:
        fast = evaluate_directions(embeddings, labels, names, k=k, backend="cpp")
        slow = evaluate_directions(embeddings, labels, names, k=k, backend="torch")
        np.testing.assert_allclose(fast.matrix, slow.matrix, rtol=0, atol=1e-12)
        assert evaluate_directions(embeddings, labels, names, k=k).directions == fast.directions


def test_without_the_extension_auto_falls_back_and_says_so_once(monkeypatch):
    monkeypatch.setattr(cpp, "AVAILABLE", False)
    monkeypatch.setattr(backends, "_already_said", set())
    q, yq, g, yg = case(15, 5, 7, 3, False)
    with pytest.warns(RuntimeWarning, match="'cpp' backend is not available for cpu tensors; using 'torch'"):
        value = evaluate_map(q, yq, g, yg)
    assert value == evaluate_map(q, yq, g, yg, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_map(q, yq, g, yg)  # said once only
    with pytest.raises(BackendError, match="backend 'cpp' is not available here"):
        evaluate_map(q, yq, g, yg, backend="cpp")


def test_triton_backend_refuses_cpu_tensors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would run Triton on CPU tensors
    reason = "needs CUDA tensors" if triton_backend.AVAILABLE else "backend 'triton' is not available here"
    with pytest.raises(BackendError, match=reason):
        evaluate_map(np.eye(2), [0, 1], np.eye(2), [0, 1], backend="triton")


def test_non_finite_embeddings_are_refused():
    g = np.eye(3)
    g[1, 2] = np.nan
    with pytest.raises(DataError, match="gallery has NaN or infinite values in 1 of its 3 rows"):
        evaluate_map(np.eye(3), [0, 1, 2], g, [0, 1, 2])


# ---------------------------------------------------------------- labels

def test_pack_bits_sets_exactly_the_labels():
    rng = np.random.default_rng(16)
    labels = torch.from_numpy((rng.random((20, 150)) < 0.1).astype(np.float32))
    packed = pack_bits(labels)
    assert packed.shape == (20, 3) and packed.dtype == torch.int64
    for c in range(150):
        bit = (packed[:, c // 64] >> (c % 64)) & 1
        assert torch.equal(bit, labels[:, c].long()), c


def test_class_codes_equal_exactly_where_ids_are_equal():
    codes = encode(torch.tensor([3, 7, 3, -1]), torch.tensor([7.0, 3.0, 2.5, -1.0, 8.0]))
    assert not codes.multilabel
    equal = codes.query[:, None] == codes.gallery[None, :]
    assert equal.tolist() == [[False, True, False, False, False], [True, False, False, False, False],
                              [False, True, False, False, False], [False, False, False, True, False]]


# ---------------------------------------------------------------- precision-recall

def test_precision_recall_by_hand():
    # Ranked relevance 1, 0, 1, 0, 0 (the worked example) and, for a second query, 0, 1, 0, 0, 0.
    gallery = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0]], dtype=np.float32)
    curve = precision_recall(np.array([[1.0, 0.0], [1.0, 0.0]]), [7, 8], gallery, [7, 8, 7, 2, 2],
                             cutoffs=[1, 2, 3, 5], backend="torch")
    np.testing.assert_allclose(curve.precision, [(1 + 0) / 2, (1 / 2 + 1 / 2) / 2, (2 / 3 + 1 / 3) / 2, (2 / 5 + 1 / 5) / 2])
    np.testing.assert_allclose(curve.recall, [(1 / 2 + 0) / 2, (1 / 2 + 1) / 2, 1.0, 1.0])
    assert curve.queries == 2 and curve.cutoffs.tolist() == [1, 2, 3, 5]
    # A query with nothing relevant anywhere has no recall: left out.
    assert precision_recall(np.ones((2, 2)), [7, 9], gallery, [7, 8, 7, 2, 2], backend="torch").queries == 1


@pytest.mark.parametrize("multilabel", [False, True])
def test_precision_recall_is_the_same_from_every_backend(multilabel):
    q, yq, g, yg = case(17, 9, 40, 3, multilabel)
    cutoffs = [1, 3, 16, 17, 40]
    expected = reference.hits_at(q, yq, g, yg, cutoffs)
    found = np.array([np.cumsum(hit_row) for hit_row in brute_force_hits(q, yq, g, yg, multilabel)])
    np.testing.assert_array_equal(expected.numpy(), found[:, np.array(cutoffs) - 1])
    if cpp.AVAILABLE:
        assert torch.equal(cpp.hits_at(q, yq, g, yg, cutoffs), expected)
        assert torch.equal(cpp.hits_at(q, yq, g, yg, cutoffs, max_memory=1), expected)
    if triton_backend.AVAILABLE:
        assert torch.equal(triton_backend.hits_at(*on(DEVICE, q, yq, g, yg), cutoffs).cpu(), expected)  # sort path
        assert torch.equal(triton_backend.hits_at(*on(DEVICE, q, yq, g, yg), [1, 3, 16]).cpu(), expected[:, :3])


def brute_force_hits(q, yq, g, yg, multilabel):
    """Relevance of each query's ranked gallery, best first (stable numpy sort of float64 cosines)."""
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    order = np.argsort(-(qn.astype(np.float64) @ gn.T.astype(np.float64)), axis=1, kind="stable")
    relevant = (yq @ yg.T > 0) if multilabel else (yq[:, None] == yg[None, :])
    return np.take_along_axis(relevant, order, 1)


def test_pr_files(tmp_path):
    q, yq, g, yg = case(18, 10, 30, 3, False)
    curves = {"a->b": precision_recall(q, yq, g, yg), "b->a": precision_recall(g, yg, q, yq)}
    assert curves["a->b"].cutoffs[0] == 1 and curves["a->b"].cutoffs[-1] == 30
    assert curves["a->b"].recall[-1] == pytest.approx(1.0)
    save_curves_csv(tmp_path / "pr.csv", curves)
    lines = (tmp_path / "pr.csv").read_text().splitlines()
    assert lines[0] == "direction,cutoff,precision,recall,queries"
    assert len(lines) == 1 + 30 + 10 and lines[1].startswith("a->b,1,")
    plot_curves(tmp_path / "pr.png", curves, title="test")
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cutoffs_are_checked():
    assert default_cutoffs(5).tolist() == [1, 2, 3, 4, 5]
    assert default_cutoffs(10_000, points=3).tolist() == [1, 5000, 10_000]
    q, yq, g, yg = case(19, 3, 5, 3, False)
    for bad in [[0, 2], [2, 2], [3, 1], [6], [], [1.5]]:
        with pytest.raises(ConfigError, match="cutoffs"):
            precision_recall(q, yq, g, yg, cutoffs=bad, backend="torch")


def chunk_spy(monkeypatch) -> list[tuple[int, int, int]]:
    """Records (rows, gallery size, bytes per pair its backend budgets) of every query chunk
    whose relevance is counted or whose scores are ranked, on every CPU path of a PR curve."""
    seen = []
    relevance = reference.relevance

    def spy_relevance(query_labels, gallery_labels):
        seen.append((len(query_labels), len(gallery_labels), reference._BYTES_PER_PAIR))
        return relevance(query_labels, gallery_labels)
    monkeypatch.setattr(reference, "relevance", spy_relevance)
    if cpp.AVAILABLE:
        extension = cpp._map_cpp

        class SpyExtension:
            def hits_at(self, scores, *args):
                seen.append((*scores.shape, cpp._BYTES_PER_SCORE_PAIR[torch.float32]))
                return extension.hits_at(scores, *args)
        monkeypatch.setattr(cpp, "_map_cpp", SpyExtension())
    return seen


def assert_within(seen, max_memory):
    assert seen
    for rows, gallery_size, bytes_per_pair in seen:
        assert rows == 1 or rows * gallery_size * bytes_per_pair <= max_memory, (rows, gallery_size, max_memory)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("multilabel", [False, True])
def test_precision_recall_honours_max_memory(backend, multilabel, monkeypatch):
    q, yq, g, yg = case(20, 23, 91, 4, multilabel)
    whole = precision_recall(q, yq, g, yg, backend=backend)
    seen = chunk_spy(monkeypatch)
    # 1: one query per chunk; then a few queries per chunk, with a partial last chunk.
    for max_memory in [1, 64 * 91 * 5, 64 * 91 * 22]:
        seen.clear()
        curve = precision_recall(q, yq, g, yg, backend=backend, max_memory=max_memory)
        for field in ("cutoffs", "precision", "recall"):
            np.testing.assert_array_equal(getattr(curve, field), getattr(whole, field))
        assert curve.queries == whole.queries
        assert_within(seen, max_memory)
        assert max_memory > 1 or {rows for rows, _, _ in seen} == {1}


@needs_cpp
def test_precision_recall_default_bounds_memory_at_any_gallery_size(monkeypatch):
    # 3,000 queries of a 2,000-item gallery: one chunk of all queries would need 3000 * 2000 * 64
    # bytes, more than the default budget, so the relevance counts as well as the ranking are chunked.
    rng = np.random.default_rng(21)
    q, g = rng.normal(size=(3000, 8)).astype(np.float32), rng.normal(size=(2000, 8)).astype(np.float32)
    yq, yg = rng.integers(0, 5, 3000), rng.integers(0, 5, 2000)
    seen = chunk_spy(monkeypatch)
    precision_recall(q, yq, g, yg, cutoffs=[1, 10, 2000], backend="cpp")
    assert_within(seen, reference.DEFAULT_MAX_MEMORY)
    assert sum(rows for rows, _, bytes_per_pair in seen if bytes_per_pair == reference._BYTES_PER_PAIR) == 3000


@needs_triton
def test_triton_hits_at_honours_max_memory(monkeypatch):
    from drcl_fast.kernels import map_ranked
    q, yq, g, yg = case(22, 5, 131, 3, True)
    cutoffs = [1, 64, 130, 131]  # beyond the fused top-k's largest k: the sort path, chunked by max_memory
    expected = reference.hits_at(q, yq, g, yg, cutoffs)
    seen = []
    walk = map_ranked.hits_at
    monkeypatch.setattr(map_ranked, "hits_at", lambda order, *args: seen.append(order.shape[0]) or walk(order, *args))
    for max_memory, rows in [(1, [1] * 5), (32 * 131 * 2, [2, 2, 1]), (None, [5])]:
        seen.clear()
        budget = {} if max_memory is None else {"max_memory": max_memory}
        assert torch.equal(triton_backend.hits_at(*on(DEVICE, q, yq, g, yg), cutoffs, **budget).cpu(), expected)
        assert seen == rows


# ---------------------------------------------------------------- real-valued scores, near-ties

DIM = 37  # not a multiple of the fused kernel's 32-wide blocks of dimensions
SCALE = 2**12


def four_squares(r: int) -> list[int]:
    """Four non-negative integers whose squares sum to r (Lagrange: they exist), by descending search."""
    for a in range(math.isqrt(r), -1, -1):
        for b in range(math.isqrt(r - a * a), -1, -1):
            rest = r - a * a - b * b
            for c in range(math.isqrt(rest), -1, -1):
                d = math.isqrt(rest - c * c)
                if c * c + d * d == rest:
                    return [a, b, c, d]
    raise AssertionError(r)


def exact_unit_row(rng: np.random.Generator, fixed: dict[int, int], near: np.ndarray | None = None) -> np.ndarray:
    """Integers m with sum m^2 = 2^24 exactly, so m / 2^12 is a float32 unit row that F.normalize leaves
    as it is, and the product of two such rows (integer / 2^24, every partial sum below 1 in magnitude)
    is exact in float32 in any summation order: every backend's own dot products give the same bits.
    `fixed`: {position: m}; `near`: a row to stay close to (cosine about 0.9)."""
    free = [i for i in range(DIM) if i not in fixed]
    spread, completion = free[:-4], free[-4:]
    noise = rng.normal(size=len(spread))
    direction = noise if near is None else near[spread] / SCALE + 0.1 * noise
    budget = 2**24 - sum(v * v for v in fixed.values())
    m = np.zeros(DIM, np.int64)
    m[list(fixed)] = list(fixed.values())
    m[spread] = np.round(direction / np.linalg.norm(direction) * math.sqrt(0.75 * budget))
    m[completion] = np.array(four_squares(2**24 - int((m * m).sum()))) * rng.choice([-1, 1], 4)
    return m


def near_tie_case(seed: int, num_queries: int, background: int, multilabel: bool):
    """Per query i, three gallery rows scored 1 float32 ulp apart or tied, exactly:
    b_i (lower index, not relevant), a_i = b_i with two entries swapped (relevant, one ulp
    above b_i) and a duplicate of a_i (higher index, not relevant); plus `background`
    random real-valued rows. In TF32 (10-bit mantissa) the two swapped entries of a_i and
    b_i, 2049/2^12 and 2048/2^12, both read 2048/2^12, so b_i ties with a_i and goes
    first by its index: a TF32 product ranks every query's crafted rows differently."""
    rng = np.random.default_rng(seed)
    classes = 6
    queries, crafted = [], []
    for i in range(num_queries):
        p = 1 + (2 * i) % (DIM - 6)
        q = exact_unit_row(rng, {p: 2049, p + 1: 2048})
        b = exact_unit_row(rng, {p: 2048, p + 1: 2049}, near=q)
        a = b.copy()
        a[[p, p + 1]] = a[[p + 1, p]]  # same norm; q.a - q.b = (b[p+1] - b[p]) (q[p] - q[p+1]) = 1 / 2^24
        queries.append(q)
        crafted += [b, a, a]
    rows = np.concatenate([np.stack(crafted) / SCALE, rng.normal(size=(background, DIM))]).astype(np.float32)
    # Gallery index of each row: the crafted ones in sorted slots (so b_i < a_i < its duplicate), the
    # random ones in between.
    slots = np.sort(rng.choice(len(rows), size=3 * num_queries, replace=False))
    position = np.concatenate([slots, np.setdiff1d(np.arange(len(rows)), slots)])
    gallery = np.empty_like(rows)
    gallery[position] = rows
    query = (np.stack(queries) / SCALE).astype(np.float32)
    if multilabel:
        yq = np.zeros((num_queries, classes), np.float32)
        yq[np.arange(num_queries), rng.integers(0, classes // 2, num_queries)] = 1.0
        yq[rng.random(num_queries) < 0.5, classes // 2 - 1] = 1.0
        yg_rows = (rng.random((len(rows), classes)) < 0.3).astype(np.float32)
        for i in range(num_queries):
            shared = np.flatnonzero(yq[i])
            yg_rows[3 * i:3 * i + 3] = 0.0
            yg_rows[3 * i:3 * i + 3, classes - 1 - i % 2] = 1.0  # b_i and the duplicate: nothing shared
            yg_rows[3 * i + 1, shared[0]] = 1.0  # a_i: relevant
    else:
        yq = rng.integers(0, classes, num_queries)
        yg_rows = rng.integers(0, classes, len(rows))
        yg_rows[:3 * num_queries] = np.repeat((yq + 1) % classes, 3)
        yg_rows[1:3 * num_queries:3] = yq
    yg = np.empty_like(yg_rows)
    yg[position] = yg_rows
    return query, yq, gallery, yg, position[:3 * num_queries].reshape(num_queries, 3)


def tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 values as a TF32 tl.dot reads them: rounded to a 10-bit mantissa, ties to even."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + ((bits >> 13) & 1) + 0xFFF) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("multilabel", [False, True])
def test_near_tie_data_is_what_it_claims(multilabel):
    q, yq, g, yg, crafted = near_tie_case(30, 17, 100, multilabel)
    qn, gn = reference.unit_rows(torch.from_numpy(q), torch.from_numpy(g))
    exact_rows = crafted.ravel()
    assert torch.equal(qn, torch.from_numpy(q)) and torch.equal(gn[exact_rows], torch.from_numpy(g[exact_rows]))
    bits = (qn @ gn.T).view(torch.int32)
    rows = torch.arange(len(q))
    b, a, duplicate = (bits[rows, crafted[:, j]] for j in range(3))
    assert torch.equal(a - b, torch.ones_like(a)) and torch.equal(a, duplicate)  # one ulp apart; tied
    # The same products with TF32 inputs (exact in float64) rank the crafted rows of every query differently.
    relevant = reference.relevance(*reference.check_inputs(q, yq, g, yg)[1::2])
    for k in [None, 1, 16]:
        exact = reference.average_precisions(q, yq, g, yg, k=k)
        rounded = reference.average_precisions_from_scores(tf32(qn).double() @ tf32(gn).double().T, relevant, k,
                                                           skip_empty=multilabel)
        assert not torch.isclose(exact, rounded, rtol=0, atol=1e-6, equal_nan=True).any(), k  # NaN: left out


@needs_cpp
@pytest.mark.parametrize("multilabel", [False, True])
def test_cpp_ranks_near_ties_like_the_reference(multilabel):
    q, yq, g, yg, _ = near_tie_case(31, 17, 100, multilabel)
    # 1 and 16: the bucket selection (k <= N/8); the others the radix sort.
    for k in [None, 1, 16, 128, 151, 500]:
        assert_same_ap(cpp.average_precisions(q, yq, g, yg, k=k), reference.average_precisions(q, yq, g, yg, k=k))


@needs_triton
@pytest.mark.parametrize("multilabel", [False, True])
def test_triton_ranks_near_ties_like_the_reference(multilabel):
    # Products of these rows are exact in any precision of float32 arithmetic, so the fused kernel's
    # own dot products give torch.mm's scores, bit for bit: its result must be the reference's.
    q, yq, g, yg, _ = near_tie_case(32, 17, 100, multilabel)
    args = on(DEVICE, q, yq, g, yg)
    for k in [1, 16, 128, None]:  # the fused top-k (several gallery slices, merged), then the sort path
        assert_same_ap(triton_backend.average_precisions(*args, k=k), reference.average_precisions(q, yq, g, yg, k=k))


def gaussian_case(seed: int, num_queries: int, gallery_size: int, multilabel: bool):
    """Random real-valued float32 rows at D = 37, a third of the gallery exact duplicates of other rows."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(num_queries, DIM)).astype(np.float32)
    g = rng.normal(size=(gallery_size, DIM)).astype(np.float32)
    copies = rng.choice(gallery_size, size=gallery_size // 3, replace=False)
    g[copies] = g[rng.choice(np.setdiff1d(np.arange(gallery_size), copies), size=len(copies))]
    return q, random_labels(rng, num_queries, 5, multilabel), g, random_labels(rng, gallery_size, 5, multilabel)


@pytest.mark.parametrize("multilabel", [False, True])
def test_backends_rank_random_float32_scores_like_the_reference(multilabel):
    # cpp and the Triton sort path rank torch.mm's scores of the same chunk shapes as the reference:
    # the same float32 values, near-ties and duplicates included, so exactly the same APs.
    q, yq, g, yg = gaussian_case(33, 21, 151, multilabel)
    if cpp.AVAILABLE:
        for k in [None, 1, 7, 50, 129, 151]:
            assert_same_ap(cpp.average_precisions(q, yq, g, yg, k=k), reference.average_precisions(q, yq, g, yg, k=k))
    if triton_backend.AVAILABLE:
        for k in [None, 129]:  # beyond the fused kernel's largest k
            assert_same_ap(triton_backend.average_precisions(*on(DEVICE, q, yq, g, yg), k=k),
                           reference.average_precisions(q, yq, g, yg, k=k))
