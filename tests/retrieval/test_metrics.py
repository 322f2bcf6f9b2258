"""P@K, R@K, NDCG@K, instance recall, rsum and the metric names (drcl_fast/retrieval/metrics.py).

Each metric is checked against an implementation written here or in scikit-learn, on
continuous Gaussian embeddings (no ties, so any correct sort agrees), then on tied data
(rows of +-1 times powers of two, whose cosines are exact) against a stable ranking, with
multi-label rows that have no label, on every backend available here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, ndcg_score

from drcl_fast.errors import BackendError, ConfigError, DataError
from drcl_fast.kernels.probe_inputs import exact_rows
from drcl_fast.retrieval import cpp, dispatch, evaluate_directions, evaluate_map, format_table, metrics_dict
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.retrieval.metrics import (METRIC_FORMS, MetricSpec, evaluate_metrics, instance_ranks,
                                         instance_recall_at_k, ndcg_at_k, parse_metric, parse_metrics,
                                         precision_at_k, recall_at_k, rsum)

BACKENDS = ["torch", *(["cpp"] if cpp.AVAILABLE else [])]
LABELLED = {"p": precision_at_k, "r": recall_at_k, "ndcg": ndcg_at_k}


# ---------------------------------------------------------------- data and independent implementations

def gaussian_case(seed: int, num_queries: int, gallery_size: int, multilabel: bool, classes: int = 5):
    """Continuous embeddings (tie-free), labels with some empty multi-label rows, and for
    multi-label a class no gallery item has (queries holding only it have nothing relevant)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(num_queries, 8)).astype(np.float32)
    g = rng.normal(size=(gallery_size, 8)).astype(np.float32)
    if not multilabel:
        return q, rng.integers(0, classes, num_queries), g, rng.integers(0, classes, gallery_size)
    yq = (rng.random((num_queries, classes)) < 0.3).astype(np.float32)
    yg = (rng.random((gallery_size, classes)) < 0.3).astype(np.float32)
    yg[:, -1] = 0
    yq[:3] = 0
    yq[3] = np.eye(classes)[-1]
    return q, yq, g, yg


def tied_case(seed: int, num_queries: int, gallery_size: int, multilabel: bool):
    """Rows of +-1 times powers of two (cosines exact in any precision), duplicated gallery rows:
    exact ties everywhere, decided by the lower index."""
    gen = torch.Generator().manual_seed(seed)
    q, g = exact_rows(gen, num_queries), exact_rows(gen, gallery_size)
    g[gallery_size // 2:] = g[:gallery_size - gallery_size // 2].clone()
    rng = np.random.default_rng(seed)
    if multilabel:
        return (q.numpy(), (rng.random((num_queries, 4)) < 0.35).astype(np.float32),
                g.numpy(), (rng.random((gallery_size, 4)) < 0.35).astype(np.float32))
    return q.numpy(), rng.integers(0, 3, num_queries), g.numpy(), rng.integers(0, 3, gallery_size)


def cosines(query, gallery) -> np.ndarray:
    q = np.asarray(query, np.float64)
    g = np.asarray(gallery, np.float64)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T


def grades_of(query_labels, gallery_labels) -> np.ndarray:
    yq, yg = np.asarray(query_labels), np.asarray(gallery_labels)
    if yq.ndim == 2:
        return yq.astype(np.float64) @ yg.T.astype(np.float64)
    return (yq[:, None] == yg[None, :]).astype(np.float64)


def stable_order(scores: np.ndarray) -> np.ndarray:
    """Each row's gallery indices by score, highest first, equal scores by the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")


def brute_force(kind: str, query, query_labels, gallery, gallery_labels, k: int) -> np.ndarray:
    """Per-query P@K, R@K or NDCG@K from a sort in numpy; NaN for multi-label queries with nothing relevant."""
    grades = grades_of(query_labels, gallery_labels)
    relevant = grades > 0
    order = stable_order(cosines(query, gallery))[:, :k]
    found = np.take_along_axis(relevant, order, 1).sum(1)
    totals = relevant.sum(1)
    if kind == "p":
        values = found / k
    elif kind == "r":
        values = found / np.maximum(totals, 1)
    else:
        discounts = 1 / np.log2(np.arange(2, order.shape[1] + 2))
        ideal = np.sort(grades, 1)[:, ::-1][:, :k] @ discounts
        gained = np.take_along_axis(grades, order, 1) @ discounts
        values = np.divide(gained, ideal, out=np.zeros_like(gained), where=ideal > 0)
    return np.where(totals == 0, np.nan, values) if np.ndim(query_labels) == 2 else values


def assert_per_query(got, expected, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=atol, equal_nan=True)


# ---------------------------------------------------------------- against independent implementations

@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("kind", ["p", "r", "ndcg"])
def test_labelled_metrics_match_a_numpy_sort(kind, multilabel):
    q, yq, g, yg = gaussian_case(1, 23, 61, multilabel)
    for k in [1, 5, 61] + ([] if kind == "p" else [80]):
        expected = brute_force(kind, q, yq, g, yg, k)
        mean, per_query = LABELLED[kind](q, yq, g, yg, k, backend="torch", return_per_query=True)
        assert per_query.dtype == torch.float64 and per_query.shape == (23,)
        assert_per_query(per_query, expected)
        assert mean == pytest.approx(np.nanmean(expected), abs=1e-12)


@pytest.mark.parametrize("multilabel", [False, True])
def test_ndcg_matches_sklearn(multilabel):
    """sklearn averages the gains of tied scores, which is why the data is tie-free."""
    q, yq, g, yg = gaussian_case(2, 19, 47, multilabel)
    grades, scores = grades_of(yq, yg), cosines(q, g)
    for k in [1, 3, 10, 47]:
        _, got = ndcg_at_k(q, yq, g, yg, k, return_per_query=True)
        for i in range(len(q)):
            if multilabel and grades[i].sum() == 0:
                assert math.isnan(got[i])   # left out, as MAP leaves such queries out
            else:
                assert float(got[i]) == pytest.approx(ndcg_score(grades[i:i + 1], scores[i:i + 1], k=k), abs=1e-12)


@pytest.mark.parametrize("multilabel", [False, True])
def test_map_at_all_matches_sklearn_average_precision(multilabel):
    q, yq, g, yg = gaussian_case(3, 21, 53, multilabel)
    relevant, scores = grades_of(yq, yg) > 0, cosines(q, g)
    _, ap = evaluate_map(q, yq, g, yg, backend="torch", return_ap=True)
    checked = 0
    for i in range(len(q)):
        if relevant[i].any():
            assert float(ap[i]) == pytest.approx(average_precision_score(relevant[i], scores[i]), abs=1e-12)
            checked += 1
        else:
            assert math.isnan(ap[i]) if multilabel else ap[i] == 0
    assert checked >= len(q) // 2   # not vacuous


def test_instance_recall_and_rsum_match_counted_ranks():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 8)).astype(np.float32)
    b = (a + rng.normal(scale=1.2, size=a.shape)).astype(np.float32)   # noisy pairs: ranks spread out
    scores = cosines(a, b)
    ranks = np.array([np.sum(scores[i] > scores[i, i]) for i in range(len(a))])
    assert 0 < (ranks == 0).sum() < len(a)
    assert torch.equal(instance_ranks(a, b), torch.as_tensor(ranks))
    got = instance_recall_at_k(a, b, ks=(1, 5, 10, 100))
    assert list(got) == [1, 5, 10, 100]
    for k, share in got.items():
        assert share == pytest.approx(np.mean(ranks < k), abs=1e-15)
    back = cosines(b, a)
    back_ranks = np.array([np.sum(back[i] > back[i, i]) for i in range(len(a))])
    expected = 100 * sum(np.mean(r < k) for r in (ranks, back_ranks) for k in (1, 5, 10))
    assert rsum(a, b) == pytest.approx(expected, abs=1e-9) == rsum(b, a)


# ---------------------------------------------------------------- the tie rule

def test_hand_ranked_ties():
    """Rows 1, 2 and 4 point the same way: they tie, and rank in index order."""
    rows = np.array([[0, 1], [1, 0], [2, 0], [1, 1], [1, 0]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    query = np.array([[3, 0]], np.float32)
    # Ranking of the query: 1, 2, 4 (tied, by index), 3, 0; class 0 is relevant at ranks 1 and 5.
    assert precision_at_k(query, [0], rows, labels, 1) == 1.0   # the highest index first would give 0
    assert precision_at_k(query, [0], rows, labels, 4) == 0.25
    assert recall_at_k(query, [0], rows, labels, 1) == 0.5
    assert ndcg_at_k(query, [0], rows, labels, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=1e-15)
    # Each row against the same rows: row 2's pair ties with row 1 (rank 1), row 4's with rows 1 and 2 (rank 2).
    assert instance_ranks(rows, rows).tolist() == [0, 0, 1, 0, 2]
    assert instance_recall_at_k(rows, rows, ks=(1, 2, 3)) == {1: 0.6, 2: 0.8, 3: 1.0}


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_data_ranks_by_the_lower_index(multilabel, backend):
    q, yq, g, yg = tied_case(5, 17, 30, multilabel)
    for kind, metric in LABELLED.items():
        for k in [1, 4, 15, 30]:
            _, got = metric(q, yq, g, yg, k, backend=backend, return_per_query=True)
            assert_per_query(got, brute_force(kind, q, yq, g, yg, k))
    # Instance ranks: items above, plus the equal ones at a lower index (the duplicates tie).
    scores = cosines(q, g[:17])
    expected = stable_order(scores).argsort(1)[np.arange(17), np.arange(17)]
    assert torch.equal(instance_ranks(q, g[:17], backend=backend), torch.as_tensor(expected))
    assert (scores == scores[np.arange(17), np.arange(17)][:, None]).sum() > 2 * 17   # ties do occur


def test_tie_rule_is_what_the_backends_rank_for_instance_recall():
    """Instance recall is single-label retrieval with the row index as the class: each backend's
    hits_at then gives it by its own ranking, ties included."""
    q, _, g, _ = tied_case(6, 24, 24, False)
    ranks = instance_ranks(q, g)
    pairs = np.arange(24)
    for backend in BACKENDS:
        hits = dispatch.hits_at(backend, torch.device("cpu"))(q, pairs, g, pairs, [1, 3, 8])
        assert torch.equal(hits.T.bool(), torch.stack([ranks < k for k in (1, 3, 8)]))


# ---------------------------------------------------------------- query rules and backends

def test_multilabel_queries_with_nothing_relevant_are_left_out():
    q, yq, g, yg = gaussian_case(7, 15, 40, True)
    nothing = grades_of(yq, yg).sum(1) == 0
    assert nothing[:4].all() and not nothing.all()   # empty rows, and a class no gallery item has
    for metric in LABELLED.values():
        mean, got = metric(q, yq, g, yg, 5, return_per_query=True)
        assert torch.isnan(got).numpy().tolist() == nothing.tolist()
        assert mean == pytest.approx(float(got[~torch.isnan(got)].mean()), abs=1e-15)
    # Gallery items without labels are never relevant, so a gallery of only those leaves every query out.
    assert precision_at_k(q, yq, g, np.zeros_like(yg), 5) == 0.0


def test_single_label_queries_always_count():
    q, yq, g, yg = gaussian_case(8, 12, 30, False)
    yq[:2] = 99   # a class the gallery lacks: 0, counted
    for metric in LABELLED.values():
        mean, got = metric(q, yq, g, yg, 5, return_per_query=True)
        assert not torch.isnan(got).any() and got[:2].tolist() == [0.0, 0.0]
        assert mean == pytest.approx(float(got.mean()), abs=1e-15)


@pytest.mark.parametrize("multilabel", [False, True])
def test_every_backend_and_chunking_gives_the_same_values(multilabel):
    q, yq, g, yg = tied_case(9, 21, 37, multilabel)
    for kind, metric in LABELLED.items():
        _, expected = metric(q, yq, g, yg, 6, backend="torch", return_per_query=True)
        for backend in BACKENDS + ["auto"]:
            for max_memory in [None, 1]:   # 1 byte: a query per chunk
                _, got = metric(q, yq, g, yg, 6, backend=backend, max_memory=max_memory, return_per_query=True)
                assert_per_query(got, expected, atol=0)
    ranks = instance_ranks(q, g[:21])
    assert torch.equal(instance_ranks(q, g[:21], max_memory=1), ranks)
    # float64 embeddings rank in float64 (NDCG by a stable sort, not float32 keys); these cosines are exact in both.
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    for kind, metric in LABELLED.items():
        assert_per_query(metric(q64, yq, g64, yg, 6, return_per_query=True)[1],
                         metric(q, yq, g, yg, 6, return_per_query=True)[1], atol=0)
    assert torch.equal(instance_ranks(q64, g64[:21]), ranks)


@pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")
def test_triton_hits_at_gives_the_same_precision_and_recall():
    q, yq, g, yg = tied_case(10, 4, 12, True)   # interpreted on the CPU: tiny
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = [torch.as_tensor(a).to(device) for a in (q, yq, g, yg)]
    for metric in (precision_at_k, recall_at_k):
        _, expected = metric(q, yq, g, yg, 5, backend="torch", return_per_query=True)
        _, got = metric(*args, 5, backend="triton", return_per_query=True)
        assert_per_query(got, expected, atol=0)


# ---------------------------------------------------------------- names and bad input

def test_metric_names():
    specs = parse_metrics(["map@all", "MAP@50", "p@10", " r@10", "nDCG@10", "ir@1", "RSUM"])
    assert [s.name for s in specs] == ["map@all", "map@50", "p@10", "r@10", "ndcg@10", "ir@1", "rsum"]
    assert [s.title for s in specs] == ["MAP@all", "MAP@50", "P@10", "R@10", "NDCG@10", "IR@1", "rsum"]
    assert [s.key for s in specs] == ["map_all", "map_50", "precision_10", "recall_10", "ndcg_10",
                                      "instance_recall_1", "rsum"]
    assert [s.instance for s in specs] == [False] * 5 + [True] * 2
    assert parse_metric("p@010") == MetricSpec("p", 10) and parse_metric(specs[2]) is specs[2]


@pytest.mark.parametrize("name", ["p@all", "map@0", "ndcg@", "rsum@10", "ap@10", "p10", "ir@-1", ""])
def test_bad_metric_names_list_the_valid_forms(name):
    with pytest.raises(ConfigError, match="the metrics are map@all, map@K, p@K"):
        parse_metric(name)


def test_bad_metric_lists_and_specs():
    with pytest.raises(ConfigError, match="p@10 is named twice"):
        parse_metrics(["p@10", "P@10"])
    with pytest.raises(ConfigError, match="at least one metric"):
        parse_metrics([])
    for kind, k in [("p", None), ("rsum", 5), ("ndcg", 0), ("x", 1), ("r", True)]:
        with pytest.raises(ConfigError, match=METRIC_FORMS.split(",")[0]):
            MetricSpec(kind, k)


def test_bad_input_errors():
    q, yq, g, yg = gaussian_case(11, 6, 9, False)
    for metric in LABELLED.values():
        for k in [0, -1, 2.5, True]:
            with pytest.raises(ConfigError, match="k must be a positive int"):
                metric(q, yq, g, yg, k)
    with pytest.raises(ConfigError, match="P@10 needs at least 10 gallery items, the gallery has 9"):
        precision_at_k(q, yq, g, yg, 10)
    assert recall_at_k(q, yq, g, yg, 10) == pytest.approx(np.mean(grades_of(yq, yg).sum(1) > 0))  # the whole gallery
    with pytest.raises(ConfigError, match="positive int"):
        instance_recall_at_k(q, g[:6], ks=(1, 0))
    with pytest.raises(DataError, match=r"needs paired data.*\(query 6, gallery 9\)"):
        instance_recall_at_k(q, g)
    with pytest.raises(DataError, match="needs paired data"):
        rsum(q, g)
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        ndcg_at_k(q, yq, g, yg, 3, backend="nope")
    with pytest.raises(DataError, match="query_labels has 5 rows but query has 6"):
        recall_at_k(q, yq[:5], g, yg, 3)


# ---------------------------------------------------------------- every direction

def three_modalities(seed: int, sizes=(18, 18, 18), multilabel: bool = False):
    out = [gaussian_case(seed + i, 1, n, multilabel)[2:] for i, n in enumerate(sizes)]
    return [x for x, _ in out], [y for _, y in out], ["img", "txt", "aud"]


def test_evaluate_metrics_every_direction():
    embeddings, labels, names = three_modalities(12)
    results = evaluate_metrics(embeddings, labels, names, ["map@all", "p@5", "r@5", "ndcg@5", "ir@1", "rsum"],
                               backend="torch")
    assert list(results) == ["map@all", "p@5", "r@5", "ndcg@5", "ir@1", "rsum"]
    map_all = evaluate_directions(embeddings, labels, names, backend="torch")
    assert results["map@all"].directions == map_all.directions and results["map@all"].mean == map_all.mean
    for i, j in [(0, 1), (2, 0)]:
        args = (embeddings[i], labels[i], embeddings[j], labels[j], 5)
        direction = f"{names[i]}->{names[j]}"
        for kind, metric in LABELLED.items():
            assert results[f"{kind}@5"].directions[direction] == metric(*args, backend="torch")
        assert results["ir@1"].directions[direction] == instance_recall_at_k(embeddings[i], embeddings[j], (1,))[1]
        assert results["rsum"].directions[direction] == pytest.approx(rsum(embeddings[i], embeddings[j]), abs=1e-9)
    matrix = results["rsum"].matrix
    assert np.array_equal(matrix, matrix.T, equal_nan=True)   # a pair's rsum in both of its directions
    blocks = format_table(list(results.values())).split("\n\n")
    assert [b.split("  (mean")[0] for b in blocks] == ["MAP@all", "P@5", "R@5", "NDCG@5", "IR@1", "rsum"]
    assert list(metrics_dict(list(results.values()))) == ["map_all", "precision_5", "recall_5", "ndcg_5",
                                                          "instance_recall_1", "rsum"]


def test_evaluate_metrics_errors_name_the_direction_and_check_pairs_first():
    embeddings, labels, names = three_modalities(13, sizes=(18, 18, 7))
    with pytest.raises(ConfigError, match="direction img->aud: P@10 needs at least 10 gallery items"):
        evaluate_metrics(embeddings, labels, names, ["p@10"])
    with pytest.raises(DataError, match=r"paired data.*\(img 18, txt 18, aud 7\)"):
        evaluate_metrics(embeddings, labels, names, ["map@all", "rsum"])
    with pytest.raises(ConfigError, match="unknown metric 'bogus'"):
        evaluate_metrics(embeddings, labels, names, ["bogus"])
    with pytest.raises(ValueError, match="at least 2 modalities"):
        evaluate_metrics(embeddings[:1], labels[:1], names[:1], ["p@1"])
