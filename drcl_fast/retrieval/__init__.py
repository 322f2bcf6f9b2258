"""Cross-modal retrieval evaluation: MAP@k of cosine ranking, per direction, the other metrics, top-k search.

`evaluate_map` scores one (query, gallery) pair; `evaluate_directions` scores
all K(K-1) ordered pairs of K modalities, as the DRCL paper reports them;
`evaluate_metrics` any of the metrics of metrics.py (P@K, R@K, NDCG@K, instance R@K,
rsum) the same way; `topk` is the exact search in the evaluator's order (nearest.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from drcl_fast.errors import ConfigError, DRCLError
from drcl_fast.retrieval import dispatch, reference
from drcl_fast.retrieval.metrics import (MetricSpec, check_modalities, evaluate_metrics, instance_ranks,
                                         instance_recall_at_k, mean_counted, ndcg_at_k, parse_metric, parse_metrics,
                                         precision_at_k, recall_at_k, rsum)
from drcl_fast.retrieval.nearest import topk
from drcl_fast.retrieval.report import DirectionResult, format_table, metrics_dict, result_line
from drcl_fast.retrieval.sharded import shard_slice, sharded_average_precisions
from drcl_fast.runtime import progress as progress_bars

__all__ = ["evaluate_map", "evaluate_directions", "evaluate_metrics", "precision_at_k", "recall_at_k", "ndcg_at_k",
           "instance_recall_at_k", "instance_ranks", "rsum", "parse_metric", "parse_metrics", "MetricSpec", "topk",
           "sharded_average_precisions", "shard_slice", "DirectionResult", "result_line", "format_table",
           "metrics_dict"]


def evaluate_map(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                 k: int | None = None, backend: str = "auto", return_ap: bool = False,
                 max_memory: int | None = None, group: Any = None,
                 shard_gallery: bool = False) -> float | tuple[float, torch.Tensor]:
    """MAP@k (k=None: MAP@all) of ranking `gallery` for each row of `query`.

    Labels are class-id vectors (single-label: every query counts, AP 0 when
    nothing relevant is retrieved) or 0/1 matrices (multi-label: such queries
    are left out). With `return_ap`, also returns the per-query APs (NaN = left out).
    `backend`: "auto", "torch" (the reference), "cpp" (CPU) or "triton" (CUDA);
    all rank the same float32 scores (float64 if given float64) identically.
    `max_memory`: bytes for one query chunk's working set (None: the backend's default).
    `group`: None evaluates in this process; a torch.distributed ProcessGroup, or "world" /
    True for the default group, spreads the queries over its ranks, or with `shard_gallery`
    takes each rank's slice of the gallery (`sharded_average_precisions`); every rank then
    returns the single-process value, the same float.
    """
    if group is not None:
        ap = sharded_average_precisions(query, query_labels, gallery, gallery_labels, k, group=group,
                                        shard_gallery=shard_gallery, backend=backend, max_memory=max_memory)
    elif shard_gallery:
        raise ConfigError("shard_gallery=True needs group= (the process group whose ranks hold the slices); "
                          "in one process pass the whole gallery and shard_gallery=False")
    else:
        q, yq, g, yg = reference.check_inputs(query, query_labels, gallery, gallery_labels, k)
        impl = dispatch.average_precisions(backend, q.device)
        ap = impl(q, yq, g, yg, k=k, **dispatch.memory_budget(max_memory))
    value = mean_counted(ap)
    return (value, ap) if return_ap else value


def evaluate_directions(embeddings: Sequence[Any], labels: Sequence[Any], names: Sequence[str],
                        k: int | None = None, backend: str = "auto",
                        progress: bool = False, max_memory: int | None = None, group: Any = None,
                        shard_gallery: bool = False) -> DirectionResult:
    """MAP@k for every ordered pair (query modality i, gallery modality j), i != j.

    `group` and `shard_gallery` as for `evaluate_map`, with every rank passing every
    modality whole: with `shard_gallery` each rank ranks only its `shard_slice` of each gallery.
    """
    check_modalities(embeddings, labels, names)
    count = len(embeddings)
    pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
    matrix = np.full((count, count), np.nan)
    directions = {}
    for i, j in progress_bars.item_bar(pairs, f"MAP@{k or 'all'}", progress):
        direction = f"{names[i]}->{names[j]}"
        part = shard_slice(len(embeddings[j]), group) if shard_gallery and group is not None else slice(None)
        try:
            matrix[i, j] = evaluate_map(embeddings[i], labels[i], embeddings[j][part], labels[j][part],
                                        k=k, backend=backend, max_memory=max_memory,
                                        group=group, shard_gallery=shard_gallery)
        except ValueError as error:
            # Keep the package's own error types, which the CLI reports without a traceback.
            kind = type(error) if isinstance(error, DRCLError) else ValueError
            raise kind(f"direction {direction}: {error}") from error
        directions[direction] = float(matrix[i, j])
    return DirectionResult(names=tuple(names), k=k, matrix=matrix,
                           mean=float(np.mean(list(directions.values()))), directions=directions)
