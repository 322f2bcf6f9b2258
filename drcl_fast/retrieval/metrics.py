"""Retrieval metrics beside MAP: P@K, R@K, NDCG@K, instance recall and rsum, and the metric names.

Every metric ranks as the MAP evaluator does (docs/design.md §2): the cosine scores of
`reference.unit_rows` computed by `reference.chunk_scores`, highest first, equal scores by
the lower gallery index. P@K and R@K count the relevant items above K with the backends'
`hits_at`; NDCG@K and the instance metrics rank with chunked torch code of their own, exact
for the same scores. The definitions, the query rules and what papers report:
docs/metrics.md.

    precision_at_k(query, query_labels, gallery, gallery_labels, k=10)
    instance_recall_at_k(image, text, ks=(1, 5, 10))     # paired rows
    evaluate_metrics(embeddings, labels, names, ["map@all", "p@10", "ndcg@10", "rsum"])
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

# The package's __init__ re-exports this module's names, so its own names are looked up
# at call time (retrieval.evaluate_map), not imported while the package is half built.
from drcl_fast import retrieval
from drcl_fast.errors import ConfigError, DataError, DRCLError
from drcl_fast.retrieval import dispatch
from drcl_fast.retrieval import labels as label_codes
from drcl_fast.retrieval import reference, sharded
from drcl_fast.retrieval.pr import relevant_totals
from drcl_fast.retrieval.report import DirectionResult
from drcl_fast.runtime import progress as progress_bars
from drcl_fast.runtime.backends import check_backend_name

__all__ = ["MetricSpec", "METRIC_FORMS", "DEFAULT_METRICS", "RSUM_CUTOFFS", "parse_metric", "parse_metrics",
           "precision_at_k", "recall_at_k", "ndcg_at_k", "instance_ranks", "instance_recall_at_k", "rsum",
           "check_paired", "evaluate_metrics"]

# ---------------------------------------------------------------- metric names

# kind: (how tables print it, its metrics.json key before "_K")
_KINDS = {"map": ("MAP", "map"), "p": ("P", "precision"), "r": ("R", "recall"), "ndcg": ("NDCG", "ndcg"),
          "ir": ("IR", "instance_recall"), "rsum": ("rsum", "rsum")}
METRIC_FORMS = "map@all, map@K, p@K, r@K, ndcg@K, ir@K, rsum (K a positive integer)"
DEFAULT_METRICS = ("map@all", "map@50")
# The instance-recall cutoffs rsum sums, as papers report it.
RSUM_CUTOFFS = (1, 5, 10)
_NAME = re.compile(r"(?P<kind>map|p|r|ndcg|ir)@(?P<k>all|\d+)|(?P<rsum>rsum)", re.IGNORECASE)


@dataclass(frozen=True)
class MetricSpec:
    """One metric at one cutoff: what `parse_metric` makes of a name such as "p@10".

    Attributes:
        kind: "map", "p", "r", "ndcg", "ir" (instance recall) or "rsum".
        k: the cutoff K; None for map@all and rsum.

    Raises:
        ConfigError: an unknown kind, or a cutoff the kind does not take.
    """

    kind: str
    k: int | None = None

    def __post_init__(self) -> None:
        takes_all = self.kind in ("map", "rsum")
        positive = isinstance(self.k, int) and not isinstance(self.k, bool) and self.k > 0
        if self.kind not in _KINDS or (self.kind == "rsum" and self.k is not None) or \
                not (positive or (takes_all and self.k is None)):
            raise ConfigError(f"no metric {self.kind!r} at k={self.k!r}; the metrics are {METRIC_FORMS}")

    @property
    def name(self) -> str:
        """The canonical name, e.g. "map@all", "p@10", "rsum"."""
        return self._label(self.kind, "@")

    @property
    def title(self) -> str:
        """How tables print it: "MAP@all", "P@10", "NDCG@10", "IR@1", "rsum"."""
        return self._label(_KINDS[self.kind][0], "@")

    @property
    def key(self) -> str:
        """Its metrics.json key: "map_all", "map_50" (as training writes them), "precision_10", "recall_10",
        "ndcg_10", "instance_recall_1", "rsum"."""
        return self._label(_KINDS[self.kind][1], "_")

    @property
    def instance(self) -> bool:
        """Whether it ranks each item's own pair (paired data), not the items of its class."""
        return self.kind in ("ir", "rsum")

    def _label(self, base: str, separator: str) -> str:
        """`base`, then the cutoff after `separator` (rsum has none)."""
        if self.kind == "rsum":
            return base
        return f"{base}{separator}{'all' if self.k is None else self.k}"


def parse_metric(name: str | MetricSpec) -> MetricSpec:
    """The metric a name stands for; the one source of the names the CLI and `evaluate_metrics` take.

    Args:
        name: "map@all", "map@K", "p@K", "r@K", "ndcg@K", "ir@K" or "rsum" (any case; K a
            positive integer), or a MetricSpec, returned as it is.

    Returns:
        The MetricSpec.

    Raises:
        ConfigError: the name has none of those forms; the message lists them.
    """
    if isinstance(name, MetricSpec):
        return name
    found = _NAME.fullmatch(str(name).strip())
    if found is None:
        raise ConfigError(f"unknown metric {name!r}; the metrics are {METRIC_FORMS}")
    if found["rsum"]:
        return MetricSpec("rsum")
    cutoff = found["k"].lower()
    if cutoff == "all" and found["kind"].lower() != "map":
        raise ConfigError(f"unknown metric {name!r}: only MAP takes 'all'; the metrics are {METRIC_FORMS}")
    return MetricSpec(found["kind"].lower(), None if cutoff == "all" else int(cutoff))


def parse_metrics(names: Iterable[str | MetricSpec]) -> list[MetricSpec]:
    """`parse_metric` of each name, in order.

    Raises:
        ConfigError: a bad name, no name at all, or one metric named twice.
    """
    specs = [parse_metric(name) for name in ([names] if isinstance(names, (str, MetricSpec)) else names)]
    if not specs:
        raise ConfigError(f"name at least one metric: {METRIC_FORMS}")
    seen = [spec.name for spec in specs]
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise ConfigError(f"metric {', '.join(twice)} is named twice; name each once")
    return specs


# ---------------------------------------------------------------- labelled retrieval: P@K, R@K, NDCG@K

def _cutoff(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    return int(k)


def mean_counted(per_query: torch.Tensor) -> float:
    """The mean over the queries that count (not NaN); 0.0 when none does, as evaluate_map."""
    counted = per_query[~torch.isnan(per_query)]
    return float(counted.mean()) if counted.numel() else 0.0


def _result(per_query: torch.Tensor, return_per_query: bool) -> float | tuple[float, torch.Tensor]:
    value = mean_counted(per_query)
    return (value, per_query) if return_per_query else value


def _relevant_totals(query_labels: torch.Tensor, gallery_labels: torch.Tensor,
                     max_memory: int | None) -> torch.Tensor:
    """(Q,) int64 relevant gallery items per query of checked labels, without ranking anything."""
    if query_labels.dim() == 2:   # a chunked label product: at least one shared label
        return relevant_totals(query_labels, gallery_labels, **dispatch.memory_budget(max_memory))
    codes = label_codes.encode(query_labels, gallery_labels)
    return torch.bincount(codes.gallery, minlength=int(codes.query.max()) + 1)[codes.query]


def _left_out(values: torch.Tensor, nothing_relevant: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """`values`, NaN for the multi-label queries with nothing relevant in the gallery (MAP's rule)."""
    return values.masked_fill(nothing_relevant.to(values.device), math.nan) if multilabel else values


def _hits_and_totals(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int, backend: str,
                     max_memory: int | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(Q,) float64 relevant items among the first min(k, N), (Q,) float64 relevant items in the
    gallery, and whether the labels are multi-label."""
    q, yq, g, yg = reference.check_inputs(query, query_labels, gallery, gallery_labels)
    top = min(_cutoff(k), g.shape[0])
    hits = dispatch.hits_at(backend, q.device)(q, yq, g, yg, [top], **dispatch.memory_budget(max_memory))
    totals = _relevant_totals(yq, yg, max_memory)
    return hits[:, 0].double().cpu(), totals.double().cpu(), yq.dim() == 2


def precision_at_k(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int,
                   backend: str = "auto", max_memory: int | None = None,
                   return_per_query: bool = False) -> float | tuple[float, torch.Tensor]:
    """P@K: the relevant items among each query's first K ranked gallery items, divided by K.

    Relevant: the same class id (labels as vectors), or at least one shared label (0/1
    matrices). A multi-label query with no relevant item in the whole gallery is left out
    (NaN per query, not in the mean); a single-label query always counts.

    Args:
        query, gallery: (Q, D) and (N, D) embeddings (tensors or numpy arrays), as evaluate_map.
        query_labels, gallery_labels: class-id vectors or 0/1 matrices.
        k: the cutoff K, 1 <= K <= N.
        backend: "auto", "torch", "cpp" or "triton": who ranks (`hits_at`); all rank alike.
        max_memory: bytes for one query chunk's working set (None: the backend's default).
        return_per_query: also return the per-query values, a (Q,) float64 CPU tensor.

    Returns:
        The mean over the queries that count (0.0 if none does); with `return_per_query`,
        (mean, per-query values).

    Raises:
        ConfigError: k is not a positive int, or exceeds the gallery size (P@K of a gallery
            smaller than K would count items that do not exist).
        DataError: inconsistent inputs, as evaluate_map.
        BackendError: a backend that cannot run here.
    """
    if _cutoff(k) > len(gallery):
        raise ConfigError(f"P@{k} needs at least {k} gallery items, the gallery has {len(gallery)}; "
                          f"use k <= {len(gallery)} (R@K and NDCG@K take a k beyond the gallery)")
    hits, totals, multilabel = _hits_and_totals(query, query_labels, gallery, gallery_labels, k, backend,
                                                max_memory)
    return _result(_left_out(hits / k, totals == 0, multilabel), return_per_query)


def recall_at_k(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int,
                backend: str = "auto", max_memory: int | None = None,
                return_per_query: bool = False) -> float | tuple[float, torch.Tensor]:
    """R@K: the relevant items among each query's first K ranked gallery items, divided by all
    the relevant items of that query in the gallery.

    A query with no relevant item in the gallery: multi-label, left out (NaN per query, not in
    the mean); single-label, 0 (counted), as MAP treats it. A k beyond the gallery is the
    gallery (R@K = 1 for every query with a relevant item).

    Args:
        query, query_labels, gallery, gallery_labels, backend, max_memory, return_per_query:
            as precision_at_k.
        k: the cutoff K, a positive int.

    Returns:
        The mean over the queries that count (0.0 if none does); with `return_per_query`,
        (mean, per-query values).

    Raises:
        ConfigError: k is not a positive int.
        DataError: inconsistent inputs, as evaluate_map.
        BackendError: a backend that cannot run here.
    """
    hits, totals, multilabel = _hits_and_totals(query, query_labels, gallery, gallery_labels, k, backend,
                                                max_memory)
    return _result(_left_out(hits / totals.clamp(min=1), totals == 0, multilabel), return_per_query)


def _over_score_chunks(query: torch.Tensor, gallery: torch.Tensor, max_memory: int | None,
                       per_chunk: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """per_chunk(first query row, scores) over query chunks of the evaluator's scores, concatenated.

    Chunks are sized by the reference's rule, so one chunk's working set stays within max_memory."""
    q, g = reference.unit_rows(query, gallery)
    step = reference.auto_chunk_size(q.shape[0], g.shape[0], max_memory or reference.DEFAULT_MAX_MEMORY)
    return torch.cat([per_chunk(start, reference.chunk_scores(q[start:start + step], g))
                      for start in range(0, q.shape[0], step)])


def _grades(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """(q, N) float32 graded relevance: the labels shared (0/1 matrices), or 1 for the same class id."""
    if query_labels.dim() == 2:
        return query_labels @ gallery_labels.T
    return (query_labels[:, None] == gallery_labels[None, :]).float()


def _top_items(scores: torch.Tensor, top: int) -> torch.Tensor:
    """(q, top) gallery indices of each row's first `top` ranked items, ties by the lower index.

    sharded.local_top selects them exactly without sorting whole rows (distinct int64 keys for
    float32 scores; a stable sort for float64)."""
    _, codes = sharded.local_top(scores, torch.zeros_like(scores, dtype=torch.bool), top, offset=0)
    return codes // 2   # codes are 2 * index + relevance, the relevance here 0


def _ndcg_of_chunk(scores: torch.Tensor, grades: torch.Tensor, top: int) -> torch.Tensor:
    """(q,) float64 DCG of the first `top` ranked items over the ideal DCG of `top` items; NaN where
    nothing is relevant (the caller decides whether that query counts)."""
    discounts = 1.0 / torch.log2(torch.arange(2, top + 2, dtype=torch.float64, device=scores.device))
    # Row sums, not a matrix-vector product, whose summation order changes with the chunk's rows.
    gained = (grades.gather(1, _top_items(scores, top)).double() * discounts).sum(1)
    ideal = (torch.topk(grades, top, dim=1).values.double() * discounts).sum(1)
    return gained / ideal.masked_fill(ideal == 0, math.nan)


def ndcg_at_k(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int,
              backend: str = "auto", max_memory: int | None = None,
              return_per_query: bool = False) -> float | tuple[float, torch.Tensor]:
    """NDCG@K with graded relevance: DCG@K of the ranking over the ideal DCG@K.

    grade(query, item) = the number of labels they share (0/1 matrices), or 1 for the same
    class id and 0 otherwise (class-id vectors). DCG@K = sum over ranks j = 1..K of
    grade_j / log2(j + 1), in the evaluator's rank order (equal scores: lower index first);
    the ideal DCG@K is the same sum over the gallery's grades sorted descending. A k beyond
    the gallery is the gallery. A query with no relevant item: multi-label, left out (NaN per
    query, not in the mean); single-label, 0 (counted).

    The first K items are selected by chunked torch code on the inputs' device for every
    backend name (no backend walks graded relevance), exactly as every backend ranks them.

    Args:
        query, query_labels, gallery, gallery_labels, k, max_memory, return_per_query: as recall_at_k.
        backend: any backend name (checked); see above.

    Returns:
        As recall_at_k: the mean over the queries that count; with `return_per_query`, also the per-query values.

    Raises:
        ConfigError, DataError: as recall_at_k.
        BackendError: an unknown backend name.
    """
    check_backend_name(backend)
    q, yq, g, yg = reference.check_inputs(query, query_labels, gallery, gallery_labels)
    top = min(_cutoff(k), g.shape[0])
    ndcg = _over_score_chunks(q, g, max_memory, lambda start, scores: _ndcg_of_chunk(
        scores, _grades(yq[start:start + len(scores)], yg), top)).cpu()
    nothing_relevant = torch.isnan(ndcg)
    return _result(_left_out(ndcg.nan_to_num(0.0), nothing_relevant, yq.dim() == 2), return_per_query)


# ---------------------------------------------------------------- instance retrieval: IR@K, rsum

def check_paired(embeddings: Sequence[Any], names: Sequence[str]) -> None:
    """Instance metrics rank each item's own pair (row i of every modality describes one thing).

    Args:
        embeddings: one (n_m, D) array per modality.
        names: the modalities' names, for the message.

    Raises:
        DataError: the modalities have different row counts, so the data is not paired.
    """
    sizes = [len(x) for x in embeddings]
    if len(set(sizes)) > 1:
        counts = ", ".join(f"{name} {size}" for name, size in zip(names, sizes))
        raise DataError(f"instance retrieval (ir@K, rsum) needs paired data, row i of every modality "
                        f"describing the same item, but the row counts differ ({counts}); evaluate "
                        f"paired test splits, or drop ir@K and rsum")


def _own_ranks(start: int, scores: torch.Tensor) -> torch.Tensor:
    """(q,) int64 0-based rank of each query's own pair (gallery row start + i) in its row of
    scores: the items scored strictly higher plus the equally scored ones at a lower index."""
    rows = torch.arange(start, start + scores.shape[0], device=scores.device)
    own = scores.gather(1, rows[:, None])
    items = torch.arange(scores.shape[1], device=scores.device)
    return (scores > own).sum(1) + ((scores == own) & (items[None, :] < rows[:, None])).sum(1)


def instance_ranks(query: Any, gallery: Any, backend: str = "auto", max_memory: int | None = None) -> torch.Tensor:
    """The rank of each query's own pair among the gallery, as the evaluator ranks it, without a sort.

    Args:
        query, gallery: (Q, D) and (Q, D) paired embeddings: gallery row i is query row i's pair.
        backend: any backend name (checked); the ranks are counted by chunked torch code on
            the inputs' device, the order every backend gives.
        max_memory: bytes for one query chunk's working set (None: 256 MiB).

    Returns:
        (Q,) int64 0-based ranks on the CPU (0: the pair comes first).

    Raises:
        DataError: unpaired (different row counts) or otherwise inconsistent embeddings.
        BackendError: an unknown backend name.
    """
    check_backend_name(backend)
    check_paired([query, gallery], ["query", "gallery"])
    # Pair ids as class labels: check_inputs then validates the embeddings as it does for MAP.
    pairs = np.arange(len(query))
    q, _, g, _ = reference.check_inputs(query, pairs, gallery, pairs)
    return _over_score_chunks(q, g, max_memory, _own_ranks).cpu()


def instance_recall_at_k(query: Any, gallery: Any, ks: Sequence[int] = RSUM_CUTOFFS, backend: str = "auto",
                         max_memory: int | None = None) -> dict[int, float]:
    """Instance recall R@K of paired data: the share of queries whose own pair is within the top K.

    Args:
        query, gallery, backend, max_memory: as instance_ranks.
        ks: the cutoffs K, positive ints (a K beyond the gallery is the gallery: 1.0).

    Returns:
        {K: share in [0, 1]} in the order of `ks`.

    Raises:
        ConfigError: a K that is not a positive int, or no K.
        DataError: unpaired or otherwise inconsistent embeddings.
        BackendError: an unknown backend name.
    """
    cutoffs = [_cutoff(k) for k in ks]
    if not cutoffs:
        raise ConfigError("ks must name at least one cutoff K")
    ranks = instance_ranks(query, gallery, backend, max_memory)
    return {k: float((ranks < k).double().mean()) for k in cutoffs}


def _recall_sum(query: Any, gallery: Any, backend: str, max_memory: int | None) -> float:
    """R@1 + R@5 + R@10 of one direction, in percent."""
    return sum(100.0 * share for share in instance_recall_at_k(query, gallery, RSUM_CUTOFFS, backend,
                                                                max_memory).values())


def rsum(a: Any, b: Any, backend: str = "auto", max_memory: int | None = None) -> float:
    """rsum of paired modalities a and b, as image-text retrieval papers report it.

    rsum = sum over the directions a->b and b->a of 100 * (R@1 + R@5 + R@10), R@K the
    instance recall (instance_recall_at_k): six percentages, from 0 to 600.

    Args:
        a, b: (n, D) paired embeddings (row i of each describes the same item).
        backend, max_memory: as instance_ranks.

    Returns:
        The rsum, in percent.

    Raises:
        DataError: unpaired or otherwise inconsistent embeddings.
        BackendError: an unknown backend name.
    """
    return _recall_sum(a, b, backend, max_memory) + _recall_sum(b, a, backend, max_memory)


# ---------------------------------------------------------------- every direction

_LABELLED = {"p": precision_at_k, "r": recall_at_k, "ndcg": ndcg_at_k}


def check_modalities(embeddings: Sequence[Any], labels: Sequence[Any], names: Sequence[str]) -> None:
    """One embedding array, one label array and one distinct name per modality, and at least two modalities."""
    count = len(embeddings)
    if len(labels) != count or len(names) != count:
        raise ValueError(f"got {count} embeddings, {len(labels)} label arrays and {len(names)} names; "
                         f"pass one of each per modality")
    if count < 2:
        raise ValueError(f"cross-modal retrieval needs at least 2 modalities, got {count}")
    if len(set(names)) != count:
        raise ValueError(f"modality names must be distinct, got {list(names)}")


def _direction_value(spec: MetricSpec, query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                     backend: str, max_memory: int | None) -> float:
    """One direction's value; for rsum, this direction's half (its R@1 + R@5 + R@10, in percent)."""
    if spec.kind == "ir":
        return instance_recall_at_k(query, gallery, (spec.k,), backend, max_memory)[spec.k]
    if spec.kind == "rsum":
        return _recall_sum(query, gallery, backend, max_memory)
    return _LABELLED[spec.kind](query, query_labels, gallery, gallery_labels, spec.k, backend, max_memory)


def _directions(spec: MetricSpec, embeddings: Sequence[Any], labels: Sequence[Any], names: Sequence[str],
                backend: str, progress: bool, max_memory: int | None) -> DirectionResult:
    count = len(embeddings)
    pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
    matrix = np.full((count, count), np.nan)
    for i, j in progress_bars.item_bar(pairs, spec.title, progress):
        try:
            matrix[i, j] = _direction_value(spec, embeddings[i], labels[i], embeddings[j], labels[j],
                                            backend, max_memory)
        except ValueError as error:
            # Keep the package's own error types, which the CLI reports without a traceback.
            kind = type(error) if isinstance(error, DRCLError) else ValueError
            raise kind(f"direction {names[i]}->{names[j]}: {error}") from error
    if spec.kind == "rsum":   # a pair's rsum sums both its directions; each direction shows it
        matrix = matrix + matrix.T
    directions = {f"{names[i]}->{names[j]}": float(matrix[i, j]) for i, j in pairs}
    return DirectionResult(names=tuple(names), k=spec.k, matrix=matrix, mean=float(np.mean(list(directions.values()))),
                           directions=directions, title=spec.title, key=spec.key)


def evaluate_metrics(embeddings: Sequence[Any], labels: Sequence[Any], names: Sequence[str],
                     metrics: Iterable[str | MetricSpec] = DEFAULT_METRICS, backend: str = "auto",
                     progress: bool = False, max_memory: int | None = None) -> dict[str, DirectionResult]:
    """Each metric for every ordered pair (query modality i, gallery modality j), i != j.

    MAP goes through evaluate_directions, unchanged. rsum belongs to a pair of modalities:
    both directions of a pair show the pair's rsum, and the mean is over pairs (for two
    modalities, the paper's rsum).

    Args:
        embeddings: one (n_m, D) array per modality.
        labels: one class-id vector or 0/1 matrix per modality.
        names: distinct modality names; directions are named "query->gallery".
        metrics: names ("map@all", "p@10", ...; see parse_metric) or MetricSpecs.
        backend, max_memory: as evaluate_map.
        progress: a progress bar per metric.

    Returns:
        {canonical metric name: DirectionResult}, in the order asked; format_table and
        metrics_dict print and save the results.

    Raises:
        ConfigError: a bad metric name or cutoff.
        DataError: inconsistent inputs (naming the direction); for ir@K and rsum, modalities
            with different row counts (the data is not paired), before anything is ranked.
        ValueError: not one embedding, label array and distinct name per modality, or fewer than two.
    """
    specs = parse_metrics(metrics)
    check_modalities(embeddings, labels, names)
    if any(spec.instance for spec in specs):
        check_paired(embeddings, names)
    results = {}
    for spec in specs:
        if spec.kind == "map":
            results[spec.name] = retrieval.evaluate_directions(embeddings, labels, names, k=spec.k, backend=backend,
                                                               progress=progress, max_memory=max_memory)
        else:
            results[spec.name] = _directions(spec, embeddings, labels, names, backend, progress, max_memory)
    return results
