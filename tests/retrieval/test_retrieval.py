"""Retrieval metric: hand-computed cases, an independent brute force, formats."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from drcl_fast.retrieval import DirectionResult, evaluate_directions, evaluate_map, format_table, metrics_dict
from drcl_fast.retrieval.reference import (DEFAULT_MAX_MEMORY, auto_chunk_size, average_precisions,
                                           average_precisions_from_scores, check_inputs, chunk_scores,
                                           unit_rows)
from drcl_fast.retrieval.report import result_line
from drcl_fast.runtime.backends import BackendError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------- brute force

def brute_force_ap(scores: np.ndarray, relevant: np.ndarray, k: int | None, multilabel: bool) -> np.ndarray:
    """Per-query AP straight from the definition, one query and one item at a time."""
    aps = []
    for row, rel in zip(scores, relevant):
        order = np.argsort(-row, kind="stable")  # ties: lowest gallery index first
        if k is not None:
            order = order[:k]
        found, total = 0, 0.0
        for rank, item in enumerate(order, start=1):
            if rel[item]:
                found += 1
                total += found / rank
        aps.append(total / found if found else (math.nan if multilabel else 0.0))
    return np.array(aps)


def brute_force_inputs(query, query_labels, gallery, gallery_labels):
    """Cosine scores (float64) and relevance, computed with numpy only."""
    def normalise(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    scores = normalise(query) @ normalise(gallery).T
    if np.ndim(query_labels) == 2:
        relevant = (np.asarray(query_labels) @ np.asarray(gallery_labels).T) > 0
    else:
        relevant = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    return scores, relevant


def tie_heavy(rng: np.random.Generator, n: int, d: int = 4) -> np.ndarray:
    """Rows of +-1 scaled by powers of two, some all-zero: every cosine is a
    multiple of 1/d, exact in any precision and summation order, and there are
    only 2**d directions, so exact ties are everywhere."""
    x = rng.choice([-1.0, 1.0], size=(n, d)) * 2.0 ** rng.integers(-3, 4, size=(n, 1))
    x[rng.random(n) < 0.1] = 0.0
    return x.astype(np.float32)


def labels_for(rng: np.random.Generator, n: int, multilabel: bool) -> np.ndarray:
    if multilabel:
        return (rng.random((n, 3)) < 0.3).astype(np.float32)  # some rows share nothing
    return rng.integers(0, 4, size=n)


def nan_equal(a, b, atol: float = 0.0) -> None:
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), rtol=0, atol=atol, equal_nan=True)


def matches_brute_force(a, b) -> None:
    # Same ranking, same counts; only the float64 summation order differs.
    nan_equal(a, b, atol=1e-12)


# ---------------------------------------------------------------- hand-computed

def test_worked_example():
    # Cosines 1, .71, 0, -.71, -1 to the query; rows shuffled so index order != rank order.
    gallery = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0]], dtype=np.float32)
    relevance = np.array([1, 0, 1, 0, 0])
    perm = np.array([3, 0, 4, 2, 1])
    query, query_labels = np.array([[1.0, 0.0]]), np.array([7])
    gallery_labels = np.where(relevance, 7, 2)[perm]
    assert evaluate_map(query, query_labels, gallery[perm], gallery_labels) == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert evaluate_map(query, query_labels, gallery[perm], gallery_labels, k=2) == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(query, query_labels, gallery[perm], gallery_labels, k=3) == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)


def test_ties_rank_by_gallery_index():
    # Scores 0, 1, 1, 1, 1: rank order is items 1, 2, 3, 4, 0 -> relevance 0, 1, 0, 1, 1.
    gallery = np.array([[0, 1], [1, 0], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    gallery_labels = np.array([1, 0, 1, 0, 1])
    query, query_labels = np.array([[1.0, 0.0]]), np.array([1])
    assert evaluate_map(query, query_labels, gallery, gallery_labels) == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3, abs=1e-12)
    # All four tied, relevant first by index: AP 1. The reverse order would give (1/3 + 2/4) / 2.
    assert evaluate_map(query, query_labels, gallery[1:], np.array([1, 1, 0, 0])) == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(query, query_labels, gallery[1:], np.array([0, 0, 1, 1])) == pytest.approx((1 / 3 + 2 / 4) / 2, abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_sort_is_stable_with_many_ties(device):
    rng = np.random.default_rng(0)
    for shape in [(3, 7), (4, 1000), (2, 200_003)]:  # small and large sizes take different sort paths
        values = rng.integers(0, 9, size=shape).astype(np.float32)
        got = torch.sort(torch.from_numpy(values).to(device), dim=1, descending=True, stable=True).indices
        np.testing.assert_array_equal(got.cpu().numpy(), np.argsort(-values, axis=1, kind="stable"))


def test_no_relevant_item_single_label_counts_as_zero():
    gallery = np.eye(3, dtype=np.float32)
    gallery_labels = np.array([0, 1, 2])
    query, query_labels = np.eye(3, dtype=np.float32)[:2], np.array([0, 9])  # class 9 is nowhere
    value, ap = evaluate_map(query, query_labels, gallery, gallery_labels, return_ap=True)
    assert value == pytest.approx(0.5, abs=1e-12)
    nan_equal(ap, [1.0, 0.0])
    # Relevant item outside the top k: also r = 0 within k, also counted.
    assert evaluate_map(np.eye(3)[[2]], [1], gallery, gallery_labels, k=1) == 0.0


def test_no_relevant_item_multi_label_is_left_out():
    gallery = np.eye(3, dtype=np.float32)
    gallery_labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    query = np.eye(3, dtype=np.float32)[:2]
    query_labels = np.array([[1, 0, 0], [0, 0, 1]])  # the second shares no label with any item
    value, ap = evaluate_map(query, query_labels, gallery, gallery_labels, return_ap=True)
    assert ap.dtype == torch.float64
    assert value == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert ap[0].item() == pytest.approx((1 + 2 / 3) / 2, abs=1e-12) and math.isnan(ap[1].item())
    assert evaluate_map(query[1:], query_labels[1:], gallery, gallery_labels) == 0.0  # nothing counted
    # Relevant items only beyond k=1 for the query [0, 1, 0]: left out, not zero.
    value = evaluate_map(np.eye(3)[[0, 2]], [[1, 0, 0], [0, 1, 0]], gallery, gallery_labels, k=1)
    assert value == 1.0


def test_k_larger_than_gallery_is_map_at_all():
    rng = np.random.default_rng(1)
    q, g = tie_heavy(rng, 9), tie_heavy(rng, 6)
    yq, yg = labels_for(rng, 9, False), labels_for(rng, 6, False)
    nan_equal(average_precisions(q, yq, g, yg, k=1000), average_precisions(q, yq, g, yg))
    assert evaluate_map(q, yq, g, yg, k=6) == evaluate_map(q, yq, g, yg, k=7) == evaluate_map(q, yq, g, yg)


# ---------------------------------------------------------------- brute force comparison

@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("num_queries,gallery_size", [(1, 1), (4, 2), (5, 3), (17, 10), (33, 31)])
def test_matches_brute_force_end_to_end(multilabel, num_queries, gallery_size):
    rng = np.random.default_rng(num_queries * 100 + gallery_size + multilabel)
    q, g = tie_heavy(rng, num_queries), tie_heavy(rng, gallery_size)
    # Duplicate gallery rows so identical embeddings differ only by index.
    g[gallery_size // 2:] = g[:gallery_size - gallery_size // 2]
    yq, yg = labels_for(rng, num_queries, multilabel), labels_for(rng, gallery_size, multilabel)
    scores, relevant = brute_force_inputs(q, yq, g, yg)
    for k in [None, 1, 2, 5, gallery_size, 50]:
        expected = brute_force_ap(scores, relevant, k, multilabel)
        matches_brute_force(average_precisions(q, yq, g, yg, k=k), expected)
        value = evaluate_map(q, yq, g, yg, k=k)
        counted = expected[~np.isnan(expected)]
        assert value == pytest.approx(counted.mean() if counted.size else 0.0, abs=1e-12)


@pytest.mark.parametrize("multilabel", [False, True])
def test_scores_helper_matches_brute_force_on_float32_scores(multilabel):
    rng = np.random.default_rng(7)
    for num_queries, gallery_size in [(1, 1), (3, 2), (6, 3), (20, 57), (64, 129)]:
        emb_q = torch.from_numpy(rng.normal(size=(num_queries, 8)).astype(np.float32))
        emb_g = torch.from_numpy(rng.normal(size=(gallery_size, 8)).astype(np.float32))
        scores = torch.nn.functional.normalize(emb_q, dim=1) @ torch.nn.functional.normalize(emb_g, dim=1).T
        # Round half the columns onto a coarse grid: continuous scores and exact ties together.
        scores[:, ::2] = torch.round(scores[:, ::2] * 4) / 4
        relevant = torch.from_numpy(rng.random((num_queries, gallery_size)) < 0.3)
        for k in [None, 1, 2, 10, 1000]:
            got = average_precisions_from_scores(scores, relevant, k, skip_empty=multilabel)
            expected = brute_force_ap(scores.double().numpy(), relevant.numpy(), k, multilabel)
            matches_brute_force(got, expected)


# ---------------------------------------------------------------- chunking, dtypes, devices

@pytest.mark.parametrize("multilabel", [False, True])
def test_chunking_is_exact(multilabel):
    rng = np.random.default_rng(3)
    q, g = tie_heavy(rng, 37), tie_heavy(rng, 50)
    yq, yg = labels_for(rng, 37, multilabel), labels_for(rng, 50, multilabel)
    for k in [None, 5]:
        whole = average_precisions(q, yq, g, yg, k=k, chunk_size=37)
        for chunk in [1, 3, 7, 36, 100]:
            nan_equal(average_precisions(q, yq, g, yg, k=k, chunk_size=chunk), whole)
        nan_equal(average_precisions(q, yq, g, yg, k=k, max_memory=1), whole)  # one query per chunk


@pytest.mark.parametrize("dim", [37, 512])
def test_float32_scores_do_not_depend_on_the_chunking(dim):
    """A query's scores are the same bits alone in a chunk, in a small one or in the whole product.

    BLAS scores one row as a matrix-vector product (and a few rows by other paths), whose
    sums differ in the last bit: near-ties would then order differently with max_memory.
    """
    torch.manual_seed(dim)
    q = torch.nn.functional.normalize(torch.randn(101, dim), dim=1)
    g = torch.nn.functional.normalize(torch.randn(211, dim), dim=1)
    whole = chunk_scores(q, g)
    for step in [1, 2, 3, 7, 15, 16, 40, 100]:
        chunked = torch.cat([chunk_scores(q[i:i + step], g) for i in range(0, 101, step)])
        assert torch.equal(chunked, whole), step


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_column_major_embeddings_score_as_row_major_ones(backend):
    """scipy's loadmat returns column-major arrays: the evaluator must rank the same bits as for the row-major
    embeddings a run holds in memory (the rows' norms, summed along strided memory, once rounded apart)."""
    generator = torch.Generator().manual_seed(5)
    # Near-duplicates of a few centres: near-ties that a last-bit difference in a score reorders.
    centres = torch.nn.functional.normalize(torch.randn(8, 512, generator=generator), dim=1)
    x = centres[torch.randint(0, 8, (600,), generator=generator)] + 2e-7 * torch.randn(600, 512, generator=generator)
    y = torch.randint(0, 4, (600,), generator=generator).numpy()
    rows = x.numpy()
    columns = np.asfortranarray(rows)
    q, _, g, _ = check_inputs(columns[:300], y[:300], columns[300:], y[300:])
    assert q.is_contiguous() and g.is_contiguous()
    for unit, expected in zip(unit_rows(q, g), unit_rows(torch.from_numpy(rows[:300]), torch.from_numpy(rows[300:]))):
        assert torch.equal(unit, expected)
    for k in (None, 50):
        assert evaluate_map(columns[:300], y[:300], columns[300:], y[300:], k=k, backend=backend) == \
            evaluate_map(rows[:300], y[:300], rows[300:], y[300:], k=k, backend=backend)


@pytest.mark.parametrize("multilabel", [False, True])
def test_chunking_is_exact_on_real_valued_scores(multilabel):
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(41, 37)).astype(np.float32), rng.normal(size=(151, 37)).astype(np.float32)
    g[0:150:3] = g[1:151:3]                                          # exact duplicates: ties
    yq, yg = labels_for(rng, 41, multilabel), labels_for(rng, 151, multilabel)
    for k in [None, 5]:
        whole = average_precisions(q, yq, g, yg, k=k, chunk_size=41)
        for chunk in [1, 2, 7, 40]:
            nan_equal(average_precisions(q, yq, g, yg, k=k, chunk_size=chunk), whole)


def test_auto_chunk_size_bounds_memory():
    assert auto_chunk_size(10, 10) == 10
    assert auto_chunk_size(10, 10, max_memory=1) == 1
    big = auto_chunk_size(10**6, 10**5)
    assert 1 <= big < 10**6 and big * 10**5 * 64 <= DEFAULT_MAX_MEMORY


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_match_float32(dtype):
    rng = np.random.default_rng(4)
    q, g = tie_heavy(rng, 12), tie_heavy(rng, 15)  # exactly representable in every dtype
    yq, yg = labels_for(rng, 12, False), labels_for(rng, 15, False)
    expected = average_precisions(q, yq, g, yg)
    got = average_precisions(torch.from_numpy(q).to(dtype), torch.from_numpy(yq),
                             torch.from_numpy(g).to(dtype), torch.from_numpy(yg))
    assert got.dtype == torch.float64
    nan_equal(got, expected)
    assert evaluate_map(np.float16(q), yq, np.float16(g), yg) == pytest.approx(float(expected.mean()), abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_works_on_the_inputs_device(device):
    rng = np.random.default_rng(5)
    q, g = tie_heavy(rng, 20), tie_heavy(rng, 30)
    for multilabel in [False, True]:
        yq, yg = labels_for(rng, 20, multilabel), labels_for(rng, 30, multilabel)
        ap = average_precisions(torch.from_numpy(q).to(device), yq, torch.from_numpy(g).to(device), yg, k=7)
        assert ap.device.type == device
        matches_brute_force(ap.cpu(), brute_force_ap(*brute_force_inputs(q, yq, g, yg), 7, multilabel))


def test_label_shapes_n_by_1_and_int_or_float_ids():
    rng = np.random.default_rng(6)
    q, g = tie_heavy(rng, 8), tie_heavy(rng, 9)
    yq, yg = labels_for(rng, 8, False), labels_for(rng, 9, False)
    expected = evaluate_map(q, yq, g, yg)
    assert evaluate_map(q, yq[:, None], g, yg.astype(np.float32)[:, None]) == expected


# ---------------------------------------------------------------- directions and reports

def three_modalities(rng):
    names = ["img", "txt", "audio"]
    embeddings = [tie_heavy(rng, n) for n in (11, 11, 13)]
    labels = [labels_for(rng, n, False) for n in (11, 11, 13)]
    return embeddings, labels, names


def test_evaluate_directions_matches_pairs():
    rng = np.random.default_rng(8)
    embeddings, labels, names = three_modalities(rng)
    for k in [None, 5]:
        result = evaluate_directions(embeddings, labels, names, k=k)
        assert result.names == tuple(names) and result.k == k
        assert result.matrix.shape == (3, 3) and result.matrix.dtype == np.float64
        assert np.isnan(np.diag(result.matrix)).all()
        assert list(result.directions) == ["img->txt", "img->audio", "txt->img",
                                           "txt->audio", "audio->img", "audio->txt"]
        for i in range(3):
            for j in range(3):
                if i != j:
                    pair = evaluate_map(embeddings[i], labels[i], embeddings[j], labels[j], k=k)
                    assert result.matrix[i, j] == pair == result.directions[f"{names[i]}->{names[j]}"]
        assert result.mean == pytest.approx(np.nanmean(result.matrix), abs=1e-15)


def test_progress_bar(capsys, monkeypatch):
    monkeypatch.setattr("drcl_fast.runtime.progress.on_terminal", lambda stream=None: True)   # bars on a terminal only
    rng = np.random.default_rng(9)
    embeddings, labels, names = three_modalities(rng)
    evaluate_directions(embeddings, labels, names, progress=True)
    assert "6/6" in capsys.readouterr().err


def test_result_line_matches_released_format():
    result = DirectionResult(names=("img", "txt"), k=None, matrix=np.array([[np.nan, 0.5], [0.123456, np.nan]]),
                             mean=0.311728, directions={"img->txt": 0.5, "txt->img": 0.123456})
    assert result_line(result) == " - mean: 0.31173 - detail:0.50000,0.12346,"
    # The released view_result loop, on a computed three-modality result.
    computed = evaluate_directions(*three_modalities(np.random.default_rng(10)))
    acc = np.nan_to_num(computed.matrix)
    released = ' - mean: %.5f' % (np.sum(acc) / 6) + ' - detail:'
    for i in range(3):
        for j in range(3):
            if i != j:
                released += ('%.5f' % acc[i, j]) + ','
    assert result_line(computed) == released


def test_format_table_and_metrics_dict():
    embeddings, labels, names = three_modalities(np.random.default_rng(11))
    results = [evaluate_directions(embeddings, labels, names), evaluate_directions(embeddings, labels, names, k=50)]
    table = format_table(results)
    blocks = table.split("\n\n")
    assert len(blocks) == 2 and blocks[0].startswith("MAP@all") and blocks[1].startswith("MAP@50")
    for block, result in zip(blocks, results):
        lines = block.splitlines()
        assert len(lines) == 2 + 3 and f"{result.mean:.5f}" in lines[0]
        assert lines[1].split()[-3:] == names
        for i, line in enumerate(lines[2:]):
            cells = line.split()
            assert cells[0] == names[i] and cells[1 + i] == "—" and len(cells) == 4
            assert {f"{result.matrix[i, j]:.5f}" for j in range(3) if j != i} <= set(cells)
    metrics = json.loads(json.dumps(metrics_dict(results)))
    assert set(metrics) == {"map_all", "map_50"}
    assert metrics["map_50"]["mean"] == results[1].mean
    assert metrics["map_all"]["directions"] == results[0].directions
    with pytest.raises(ValueError, match="one result per k"):
        metrics_dict([results[0], results[0]])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(query_labels=a["query_labels"][:-1]), "query_labels has 3 rows but query has 4"),
    (lambda a: a.update(gallery_labels=a["gallery_labels"][:-1]), "gallery_labels has 4 rows but gallery has 5"),
    (lambda a: a.update(gallery=np.ones((5, 3))), "width 2 but gallery embeddings have width 3"),
    (lambda a: a.update(gallery_labels=np.eye(5, 3)), "class-id vector but gallery_labels is a multi-label"),
    (lambda a: a.update(query_labels=np.eye(4, 3), gallery_labels=np.eye(5, 4)), "3 classes but gallery_labels has 4"),
    (lambda a: a.update(k=0), "k must be None"),
    (lambda a: a.update(query=np.ones(4)), "query must be a 2-D"),
    (lambda a: a.update(gallery=np.ones((0, 2)), gallery_labels=np.ones(0)), "gallery has no rows"),
])
def test_bad_inputs_raise_helpful_errors(change, message):
    args = dict(query=np.ones((4, 2)), query_labels=np.zeros(4), gallery=np.ones((5, 2)),
                gallery_labels=np.zeros(5), k=None)
    change(args)
    with pytest.raises(ValueError, match=message):
        evaluate_map(**args)


def test_bad_directions_raise():
    embeddings, labels, names = three_modalities(np.random.default_rng(12))
    with pytest.raises(ValueError, match="at least 2 modalities"):
        evaluate_directions(embeddings[:1], labels[:1], names[:1])
    with pytest.raises(ValueError, match="one of each per modality"):
        evaluate_directions(embeddings, labels[:2], names)
    with pytest.raises(ValueError, match="distinct"):
        evaluate_directions(embeddings, labels, ["a", "a", "b"])
    with pytest.raises(ValueError, match="direction img->txt: query_labels has 10 rows"):
        evaluate_directions(embeddings, [labels[0][:-1]] + labels[1:], names)
    with pytest.raises(ValueError, match="k must be None"):
        evaluate_directions(embeddings, labels, names, k=0)


# "cpp" without the extension: tests/retrieval/test_retrieval_backends.py (it is built by the install).
@pytest.mark.parametrize("backend", ["triton", "nonsense"])
def test_unavailable_backend_raises(backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would run Triton on CPU tensors
    with pytest.raises(BackendError):
        evaluate_map(np.eye(2), [0, 1], np.eye(2), [0, 1], backend=backend)


def test_auto_and_torch_backends_agree_without_warning(recwarn):
    q, y = np.eye(3), [0, 1, 1]
    assert evaluate_map(q, y, q, y, backend="auto") == evaluate_map(q, y, q, y, backend="torch")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
