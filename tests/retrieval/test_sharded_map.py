"""Sharded MAP (drcl_fast.retrieval.sharded) gives the single-process float, exactly.

In-process: the pieces (scores of a slice, the top-k merge, the global rank count, the
backends' summations) against the single-process computation, and the whole per-rank
algorithm with ranks as threads (an in-memory Exchange). Under torchrun (gloo, 2 and
3 ranks): every case of one launch against `evaluate_map` in this process, compared
with ==, and `drcl-fast eval` against its single-process metrics.json.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from drcl_fast.cli import main
from drcl_fast.errors import ConfigError, DataError
from drcl_fast.retrieval import cpp, evaluate_map, reference, sharded
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.retrieval.labels import encode
from tests.support import REPO, run_torchrun

needs_cpp = pytest.mark.skipif(not cpp.AVAILABLE, reason="drcl_fast.retrieval._map_cpp is not built here")
SUMMATIONS = ["torch", pytest.param("cpp", marks=needs_cpp)]
BACKENDS = ["auto", "torch"]  # auto: cpp where it is built, as a user gets it


@pytest.fixture
def one_thread():
    """One intra-op thread, as torchrun gives each rank: for ranks run as threads and for many tiny
    ops, where OpenMP threads that wait on a descheduled peer cost a time slice per op on a busy
    2-core machine (100x slower seen). The torchrun tests keep this process's default threads,
    so that they also compare across thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- data with exact ties across any slicing

def tie_rows(rng: np.random.Generator, n: int, dim: int = 4) -> np.ndarray:
    """Small integers: few distinct rows, so exact score ties everywhere; a third are copies of others."""
    x = rng.integers(-1, 3, (n, dim)).astype(np.float32)
    x[:, 0] += x.sum(1) == x[:, 0]  # no zero rows
    copies = rng.integers(0, n, n // 3)
    x[copies] = x[rng.integers(0, n, n // 3)]
    return x


def real_rows(rng: np.random.Generator, n: int, dim: int, dtype=np.float32) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(dtype)
    x[rng.integers(0, n, n // 5)] = x[rng.integers(0, n, n // 5)]  # exact duplicates: tied scores
    return x


def labels_for(rng: np.random.Generator, n: int, multilabel: bool) -> np.ndarray:
    """Class ids in 0..3, or 5 labels at 25% (some rows without any: queries with nothing relevant)."""
    return (rng.random((n, 5)) < 0.25).astype(np.float32) if multilabel else rng.integers(0, 4, n)


def random_edges(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    """Slice boundaries in rank order, uneven, empty slices allowed."""
    return [0, *sorted(rng.integers(0, total + 1, parts - 1).tolist()), total]


def ties_across(scores: torch.Tensor, edges: list[int]) -> int:
    """Queries with an exact score tie between items of different slices."""
    slice_of = torch.bucketize(torch.arange(scores.shape[1]), torch.tensor(edges[1:-1]), right=True)
    equal = scores[:, :, None] == scores[:, None, :]
    return int((equal & (slice_of[:, None] != slice_of[None, :])).any(2).any(1).sum())


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of AP tensors, NaN equal to NaN."""
    return a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        a[~torch.isnan(a)], b[~torch.isnan(b)])


# ---------------------------------------------------------------- ranks as threads

class ThreadGroup:
    """An in-memory Exchange for `size` ranks run as threads: the sharded algorithm, no processes."""

    def __init__(self, size: int):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size)

    def _everyone(self, rank: int, value):
        self.barrier.wait()
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def run(self, fn) -> list:
        """fn(exchange, rank) on every rank at once; the results in rank order (a rank's error is raised)."""
        results, errors = [None] * self.size, [None] * self.size

        def one(rank: int) -> None:
            try:
                results[rank] = fn(RankView(self, rank), rank)
            except threading.BrokenBarrierError:
                pass
            except Exception as error:  # noqa: BLE001 - re-raised below, after the other threads stop
                errors[rank] = error
                self.barrier.abort()
        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for error in errors:
            if error is not None:
                raise error
        return results


class RankView:
    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank, self.size = group, rank, group.size

    def objects(self, value):
        return self.group._everyone(self.rank, value)

    def gather(self, flat, sizes):
        assert flat.numel() == sizes[self.rank]
        return [t.clone() for t in self.group._everyone(self.rank, flat)]

    def reduce_sum(self, tensor, owner):
        parts = self.group._everyone(self.rank, tensor)
        return torch.stack(parts).sum(0).to(tensor.dtype) if self.rank == owner else None


def threaded(size, q, yq, g, yg, k=None, backend="auto", max_memory=None, edges=None):
    """Per-rank APs with the gallery sharded at `edges` (None: queries sharded)."""
    def rank_fn(exchange, r):
        gr, ygr = (g, yg) if edges is None else (g[edges[r]:edges[r + 1]], yg[edges[r]:edges[r + 1]])
        return sharded._average_precisions(exchange, q, yq, gr, ygr, k, edges is not None, backend, max_memory)
    return ThreadGroup(size).run(rank_fn)


# ---------------------------------------------------------------- the pieces

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_slice_scores_the_bits_of_the_whole_product(dtype, one_thread):
    """Every slice (tiny ones, empty neighbours, across SCORE_ALIGN boundaries) in any query
    chunking gets the whole gallery's float bits. Slices scored alone differ (checked too)."""
    rng = np.random.default_rng(0)
    plain_differs = False
    for total, dim in [(5, 37), (40, 7), (1000, 37), (2999, 128)]:
        q = torch.from_numpy(rng.normal(size=(41, dim))).to(dtype)
        g = torch.from_numpy(rng.normal(size=(total, dim))).to(dtype)
        qu, gu = reference.unit_rows(q, g)
        for step in (41, 16, 5):
            whole = torch.cat([reference.chunk_scores(qu[i:i + step], gu) for i in range(0, 41, step)])
            for edges in (random_edges(rng, total, 3), [0, 1, 13, total], [0, total - 4, total]):
                for lo, hi in zip(edges, edges[1:]):
                    if hi == lo:
                        continue
                    scorer = sharded.SliceScorer(q, g[lo:hi].clone(), lo, total)
                    part = torch.cat([scorer.scores(i, min(i + step, 41)) for i in range(0, 41, step)])
                    assert torch.equal(part, whole[:, lo:hi]), (total, dim, step, lo, hi)
                    gallery_alone = reference.unit_rows(q, g[lo:hi])[1]
                    alone = torch.cat([reference.chunk_scores(qu[i:i + step], gallery_alone)
                                       for i in range(0, 41, step)])
                    plain_differs |= not torch.equal(alone, whole[:, lo:hi])
    assert plain_differs  # the window is needed on this machine's BLAS


def test_score_window_keeps_column_positions():
    align = sharded.SCORE_ALIGN
    assert sharded.score_window(0, 10, 10) == (0, 10)                # small gallery: its whole shape
    assert sharded.score_window(3, 4, 200) == (0, 200)
    assert sharded.score_window(align + 5, 10, 10 * align) == (align, 2 * align)
    assert sharded.score_window(5 * align + 1, 3, 5 * align + 4) == (4 * align, 5 * align + 4)  # >= align wide
    for offset, size, total in [(0, 1, 1), (700, 2000, 5000), (4990, 10, 5000), (383, 2, 385)]:
        start, stop = sharded.score_window(offset, size, total)
        assert start % align == 0 and start <= offset and offset + size <= stop <= total
        assert stop == total or stop % align == 0
        assert stop - start >= min(align, total)


def top_hits_of_slices(scores, relevant, edges, top, reverse_ties=False):
    """merge_top of each slice's local_top; reverse_ties: global indices mirrored, i.e. ties by highest index."""
    n = scores.shape[1]
    values, keys = [], []
    for lo, hi in zip(edges, edges[1:]):
        v, key = sharded.local_top(scores[:, lo:hi], relevant[:, lo:hi], top, lo)
        if reverse_ties:
            key = (n - 1 - key // 2) * 2 + key % 2
        values.append(v)
        keys.append(key)
    return sharded.merge_top(values, keys, top)


def test_merge_of_slice_tops_is_the_whole_ranking_and_a_wrong_tie_rule_is_caught(one_thread):
    rng = np.random.default_rng(1)
    wrong_rule_differs = across = 0
    for trial in range(40):
        num_q, n = int(rng.integers(1, 30)), int(rng.integers(1, 200))
        q, g = reference.unit_rows(torch.from_numpy(tie_rows(rng, num_q)), torch.from_numpy(tie_rows(rng, n)))
        scores = reference.chunk_scores(q, g)
        relevant = reference.relevance(torch.from_numpy(labels_for(rng, num_q, False)),
                                       torch.from_numpy(labels_for(rng, n, False)))
        edges = random_edges(rng, n, int(rng.integers(1, 6)))
        across += ties_across(scores, edges)
        for top in (1, 3, 17, n):
            expected = reference.ranked_hits(scores, relevant, min(top, n))
            assert torch.equal(top_hits_of_slices(scores, relevant, edges, min(top, n)), expected)
            wrong = top_hits_of_slices(scores, relevant, edges, min(top, n), reverse_ties=True)
            wrong_rule_differs += not torch.equal(reference.ap_from_hits(wrong, False),
                                                  reference.ap_from_hits(expected, False))
    assert across > 200 and wrong_rule_differs > 100  # ties across slices abound, and the tie rule decides APs


def global_ranks_of_slices(scores, relevant, edges):
    """(ranks, found) of every relevant item, counted slice by slice as the ranks count them."""
    kind = sharded.KeyedSlice if sharded.keyed(scores.dtype, scores.shape[1]) else sharded.SortedSlice
    slices = [kind(scores[:, lo:hi], relevant[:, lo:hi], lo) for lo, hi in zip(edges, edges[1:])]
    found = torch.stack([s.found for s in slices])
    parts = [s.outgoing for s in slices]
    before = sum(s.count_before(parts, found, t, edges[:-1]) for t, s in enumerate(slices))
    valid = torch.arange(before.shape[1]) < found.sum(0)[:, None]
    ranks = torch.where(valid, before + 1, scores.shape[1] + 1)
    return sharded.sort_rows(ranks), found.sum(0)


def counted_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> list[list[int]]:
    """Brute force: 1 + items scored higher + equal-scored items at a lower index."""
    out = []
    for s, rel in zip(scores.tolist(), relevant.tolist()):
        out.append(sorted(1 + sum(x > s[j] for x in s) + sum(x == s[j] for x in s[:j])
                          for j in range(len(s)) if rel[j]))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_rank_count_over_slices_and_a_wrong_tie_rule_is_caught(dtype, monkeypatch, one_thread):
    rng = np.random.default_rng(2)
    cases = []
    for trial in range(30):
        num_q, n = int(rng.integers(1, 12)), int(rng.integers(1, 90))
        q, g = (torch.from_numpy(tie_rows(rng, m)).to(dtype) for m in (num_q, n))
        scores = reference.chunk_scores(*reference.unit_rows(q, g))
        relevant = reference.relevance(torch.from_numpy(labels_for(rng, num_q, trial % 2 == 1)),
                                       torch.from_numpy(labels_for(rng, n, trial % 2 == 1)))
        cases.append((scores, relevant, random_edges(rng, n, int(rng.integers(1, 5))), counted_ranks(scores, relevant)))
    right = []
    for scores, relevant, edges, expected in cases:
        ranks, found = global_ranks_of_slices(scores, relevant, edges)
        assert [r[:f] for r, f in zip(ranks.tolist(), found.tolist())] == expected
        right.append(ranks)
    if dtype == torch.float32:  # the keys carry the tie rule: break ties by the highest index instead
        monkeypatch.setattr(sharded, "tie_keys", lambda score_key, index2: (score_key << 32) + (2**32 - 2 - index2))
        wrong = [global_ranks_of_slices(scores, relevant, edges)[0] for scores, relevant, edges, _ in cases]
        assert sum(not torch.equal(a, b) for a, b in zip(wrong, right)) > 20
    assert sum(ties_across(scores, edges) > 0 for scores, _, edges, _ in cases) > 15


@pytest.mark.parametrize("summation", SUMMATIONS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_ap_from_ranks_sums_as_the_backend_does(summation, multilabel):
    """The same float64 APs as the backend's own walk, on real-valued rankings (sums that depend on order)."""
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(37, 16)).astype(np.float32), rng.normal(size=(3001, 16)).astype(np.float32)
    yq, yg = labels_for(rng, 37, multilabel), labels_for(rng, 3001, multilabel)
    qt, yqt, gt, ygt = reference.check_inputs(q, yq, g, yg)
    scores = reference.chunk_scores(*reference.unit_rows(qt, gt))
    relevant = reference.relevance(yqt, ygt)
    for top in (None, 50):
        width = 3001 if top is None else top
        hit = reference.ranked_hits(scores, relevant, width)
        positions = torch.arange(1, width + 1)
        ranks = torch.where(hit, positions, width + 1).sort(1).values
        got = sharded.ap_from_ranks(ranks, hit.sum(1), width, multilabel, summation)
        if summation == "torch":
            expected = reference.ap_from_hits(hit, multilabel)
        else:
            codes = encode(yqt, ygt)
            expected = torch.from_numpy(cpp._map_cpp.average_precisions(
                scores.numpy(), codes.query.numpy(), codes.gallery.numpy(), width, multilabel, 2))
        assert same(got, expected)


@pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")
def test_triton_summation_matches_its_sort_path(one_thread):
    """Triton's sort path (MAP@all beyond 128 items, float64) ranks torch.mm scores and sums in its walk
    kernel (the interpreter here): the sharded path sums with the same kernel, to the same floats.
    (Its fused MAP@k kernel computes scores of its own, which a gallery slice cannot reproduce.)"""
    rng = np.random.default_rng(4)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for k, dtype in [(None, np.float32), (7, np.float64)]:
        q, g = tie_rows(rng, 5).astype(dtype), tie_rows(rng, 150).astype(dtype)
        yq, yg = labels_for(rng, 5, True), labels_for(rng, 150, True)
        _, expected = evaluate_map(q, yq, g, yg, k=k, backend="triton", return_ap=True)
        for ap in threaded(3, *(torch.from_numpy(a).to(device) for a in (q, yq, g, yg)), k=k,
                           backend="triton", edges=[0, 70, 70, 150]):
            assert same(ap.cpu(), expected.cpu())


# ---------------------------------------------------------------- the whole algorithm, ranks as threads

@pytest.mark.parametrize("backend", BACKENDS)
def test_threaded_ranks_equal_one_process(backend, one_thread):
    """Both modes, odd sizes, ties, empty slices, chunked in pieces, float32 and float64."""
    rng = np.random.default_rng(5)
    for trial in range(16):
        num_q, n = int(rng.integers(1, 40)), int(rng.integers(1, 1500))
        multilabel = trial % 3 == 0
        if trial % 2:
            dtype = np.float64 if trial % 4 == 1 else np.float32
            q, g = real_rows(rng, num_q, 37, dtype), real_rows(rng, n, 37, dtype)
        else:
            q, g = tie_rows(rng, num_q), tie_rows(rng, n)
        yq, yg = labels_for(rng, num_q, multilabel), labels_for(rng, n, multilabel)
        size = int(rng.integers(1, 5))
        edges = random_edges(rng, n, size)
        for k in (None, 7, n + 5):
            for max_memory in (None, 64 * n * 5):  # 5 queries a chunk: several chunks and owners
                value, expected = evaluate_map(q, yq, g, yg, k=k, backend=backend, return_ap=True,
                                               max_memory=max_memory)
                for mode in (None, edges):
                    for ap in threaded(size, q, yq, g, yg, k, backend, max_memory, mode):
                        assert same(ap, expected), (trial, k, max_memory, mode)


# ---------------------------------------------------------------- errors

def test_group_without_torch_distributed_says_how_to_launch():
    x, y = np.eye(3, dtype=np.float32), np.arange(3)
    with pytest.raises(ConfigError, match="torch.distributed is not initialised.*torchrun.*group=None"):
        evaluate_map(x, y, x, y, group="world")
    with pytest.raises(ConfigError, match="shard_gallery=True needs group="):
        evaluate_map(x, y, x, y, shard_gallery=True)


def test_inconsistent_ranks_raise_the_same_error_everywhere(one_thread):
    rng = np.random.default_rng(6)
    q, g = tie_rows(rng, 10), tie_rows(rng, 30)
    yq, yg = labels_for(rng, 10, False), labels_for(rng, 30, False)
    multi = labels_for(rng, 30, True)

    cases = [
        (lambda r: (q[:10 - r], yq[:10 - r], g[15 * r:15 * r + 15], yg[15 * r:15 * r + 15], None, True, "auto", None),
         DataError, "rank 1 passes 9 queries of width 4, rank 0 10 of width 4; every rank must pass the whole"),
        (lambda r: (q[:, :4 - r], yq, g[15 * r:15 * r + 15, :4 - r], yg[15 * r:15 * r + 15], None, True, "auto",
                    None), DataError, "rank 1 passes 10 queries of width 3, rank 0 10 of width 4"),
        (lambda r: (q, yq, g[:30 - r], yg[:30 - r], None, False, "auto", None),
         DataError, "without shard_gallery every rank passes the whole gallery"),
        (lambda r: (q, yq, g, yg, 5 + r, False, "auto", None), ConfigError, "rank 1 evaluates with k=6, rank 0 with 5"),
        (lambda r: (q, yq, g, yg, None, r == 1, "auto", None), ConfigError, "the same shard_gallery"),
        (lambda r: (q, yq if r == 0 else multi[:10], g[15 * r:15 * r + 15], yg[:15] if r == 0 else multi[15:],
                    None, True, "auto", None), DataError, "labels in the same form"),
        (lambda r: (q, yq, g[:0], yg[:0], None, True, "auto", None), DataError, "every rank's gallery slice is empty"),
        (lambda r: (q, yq, g[:0, :2] if r else g[:15], yg[:0] if r else yg[:15], None, True, "auto", None),
         DataError, r"rank 1 of 2: an empty gallery slice must have shape \(0, 4\)"),
    ]
    for per_rank, kind, message in cases:
        raised = []

        def catching(exchange, r, per_rank=per_rank):
            try:
                sharded._average_precisions(exchange, *per_rank(r))
            except (DataError, ConfigError) as error:
                raised.append((type(error), str(error)))
        ThreadGroup(2).run(catching)
        # Every rank raises the same error, so that none waits in a collective for the others.
        assert len(raised) == 2 and raised[0] == raised[1], raised
        assert raised[0][0] is kind and re.search(message, raised[0][1]), raised[0]


# ---------------------------------------------------------------- under torchrun

def torchrun_cases() -> list[dict]:
    """Cases for one launch: every mode, cutoff and label form on tie-heavy and real-valued data."""
    rng = np.random.default_rng(7)
    data = []
    for name, multilabel, make in [("ties", False, lambda n: tie_rows(rng, n)),
                                   ("ties-multi", True, lambda n: tie_rows(rng, n)),
                                   ("real", False, lambda n: real_rows(rng, n, 37)),
                                   ("real-multi", True, lambda n: real_rows(rng, n, 37)),
                                   ("real64", False, lambda n: real_rows(rng, n, 37, np.float64))]:
        num_q, n = (23, 400) if name.startswith("ties") else (19, 1000)
        data.append((name, make(num_q), labels_for(rng, num_q, multilabel), make(n), labels_for(rng, n, multilabel)))
    data.append(("tiny", tie_rows(rng, 2), labels_for(rng, 2, False), tie_rows(rng, 5), labels_for(rng, 5, False)))
    cases = []
    for name, q, yq, g, yg in data:
        n = len(g)
        edges = {2: [0, n // 2 + 7 if n > 20 else 1, n], 3: [0, 0, n // 3 if n > 20 else 2, n]}
        for k in (None, 7, n + 3):
            for backend in BACKENDS:
                for shard_gallery in (False, True):
                    cases.append(dict(name=f"{name} k={k} {backend} shard={shard_gallery}",
                                      query=torch.from_numpy(q), query_labels=torch.from_numpy(np.asarray(yq)),
                                      gallery=torch.from_numpy(g), gallery_labels=torch.from_numpy(np.asarray(yg)),
                                      k=k, backend=backend, max_memory=64 * n * 5, shard_gallery=shard_gallery,
                                      edges=edges, group="world"))
    # The other ways to name a group; the last slice empty.
    for group in (True, "new"):
        cases.append({**cases[1], "name": f"group={group}", "group": group, "edges": {2: [0, 400, 400],
                                                                                    3: [0, 150, 400, 400]}})
    for vary in ("queries", "width"):
        cases.append({**cases[1], "name": f"vary {vary}", "vary": vary})
    return cases


def expected_result(case: dict) -> dict:
    value, ap = evaluate_map(case["query"], case["query_labels"], case["gallery"], case["gallery_labels"],
                             k=case["k"], backend=case["backend"], return_ap=True, max_memory=case["max_memory"])
    return {"map": value, "ap": ap.tolist()}


def same_floats(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b))


@pytest.mark.parametrize("nproc", [2, 3])
def test_torchrun_ranks_give_the_single_process_float(tmp_path, nproc):
    cases = torchrun_cases()
    torch.save(cases, tmp_path / "cases.pt")
    run_torchrun(["tests/retrieval/sharded_worker.py", tmp_path / "cases.pt", tmp_path], nproc=nproc, timeout=150)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(nproc)]
    for i, case in enumerate(cases):
        got = [results[i] for results in per_rank]
        if "vary" in case:
            assert all(r["error"][0] == "DataError" and "rank 1 passes" in r["error"][1] for r in got), got
            assert len({r["error"][1] for r in got}) == 1
            continue
        expected = expected_result(case)
        for rank, result in enumerate(got):
            assert "error" not in result, (case["name"], rank, result)
            assert result["map"] == expected["map"], (case["name"], rank, result["map"], expected["map"])
            assert same_floats(result["ap"], expected["ap"]), (case["name"], rank)


def write_modalities(folder, rng) -> list[str]:
    paths = []
    for m, n in enumerate((40, 37, 29)):
        x = real_rows(rng, n, 9)
        path = folder / f"mod{m}.npz"
        np.savez(path, embeddings=x, labels=labels_for(rng, n, False))
        paths.append(str(path))
    return paths


def test_eval_cli_under_torchrun_writes_the_single_process_metrics(tmp_path, capsys):
    files = write_modalities(tmp_path, np.random.default_rng(8))
    flags = ["--files", *files, "--k", "all", "5", "--quiet"]
    assert main(["eval", *flags, "--out", str(tmp_path / "one")]) == 0
    alone = capsys.readouterr().out
    done = run_torchrun(["-m", "drcl_fast", "eval", *flags, "--out", tmp_path / "two", "--shard_gallery"], nproc=2)
    assert (tmp_path / "two" / "metrics.json").read_text() == (tmp_path / "one" / "metrics.json").read_text()
    assert done.stdout == alone  # rank 0 alone prints, the same lines


def test_eval_cli_refuses_pr_curves_with_a_sharded_gallery(tmp_path, capsys):
    files = write_modalities(tmp_path, np.random.default_rng(9))
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--files", *files, "--shard_gallery", "--pr_plot", str(tmp_path / "pr.png")])
    assert stopped.value.code == 2
    assert "--pr_plot cannot be combined with --shard_gallery" in capsys.readouterr().err


def test_bench_smoke_runs_and_every_row_equals_one_process():
    done = subprocess.run([sys.executable, "bench/cpu/sharded_map.py", "--smoke"], capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "sharded" in line]
    assert len(rows) == 2 and all(row.endswith("| True |") for row in rows), done.stdout
