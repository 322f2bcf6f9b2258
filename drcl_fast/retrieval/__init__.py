"""Cross-modal retrieval evaluation: MAP@k of cosine ranking, per direction, the other metrics, top-k search.

`evaluate_map` scores one (query, gallery) pair; `evaluate_directions` scores
all K(K-1) ordered pairs of K modalities, as the DRCL paper reports them;
`evaluate_metrics` any of the metrics of metrics.py (P@K, R@K, NDCG@K, instance R@K,
rsum) the same way; `topk` is the exact search in the evaluator's order (nearest.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from drcl_fast.errors import ConfigError, DRCLError
from drcl_fast.retrieval import dispatch, reference
from drcl_fast.retrieval.metrics import (check_modalities, evaluate_metrics, instance_recall_at_k, mean_counted,
                                         ndcg_at_k, precision_at_k, recall_at_k, rsum)
from drcl_fast.retrieval.nearest import topk
from drcl_fast.retrieval.reference import ArrayLike
from drcl_fast.retrieval.report import DirectionResult, format_table, metrics_dict
from drcl_fast.retrieval.sharded import shard_slice, sharded_average_precisions
from drcl_fast.runtime import progress as progress_bars

# What users call; the backends, the metric-name parser and the sharded AP are in their modules.
__all__ = ["evaluate_map", "evaluate_directions", "evaluate_metrics", "precision_at_k", "recall_at_k", "ndcg_at_k",
           "instance_recall_at_k", "rsum", "topk", "shard_slice", "DirectionResult", "format_table", "metrics_dict"]


def evaluate_map(query: ArrayLike, query_labels: ArrayLike, gallery: ArrayLike, gallery_labels: ArrayLike,
                 k: int | None = None, backend: str = "auto", return_ap: bool = False,
                 max_memory: int | None = None, group: torch.distributed.ProcessGroup | str | bool | None = None,
                 shard_gallery: bool = False) -> float | tuple[float, torch.Tensor]:
    """MAP@k (k=None: MAP@all) of ranking `gallery` for each row of `query` by cosine similarity.

    Items rank by cosine, equal scores by the lower gallery index (docs/design.md section 2).
    Labels are class-id vectors (single-label: every query counts, AP 0 when nothing relevant
    is retrieved) or 0/1 matrices (multi-label: relevant means at least one shared label, and a
    query with nothing relevant in the gallery is left out). Queries run in chunks, so memory
    stays bounded.

    Args:
        query: (Q, D) query embeddings (tensor, numpy array or nested lists).
        query_labels: (Q,) class ids, or a (Q, C) 0/1 matrix.
        gallery: (N, D) gallery embeddings, on the query's device.
        gallery_labels: (N,) class ids, or an (N, C) 0/1 matrix: the same form as `query_labels`.
        k: rank cutoff (MAP@k), a positive int; None: the whole gallery (MAP@all).
        backend: "auto", "torch" (the reference), "cpp" (CPU) or "triton" (CUDA); all rank the
            same float32 scores (float64 if given float64) identically.
        return_ap: also return the per-query APs.
        max_memory: bytes for one query chunk's working set (None: the backend's default).
        group: None evaluates in this process; a torch.distributed ProcessGroup, or "world" /
            True for the default group, spreads the queries over its ranks (each passing all
            the inputs), or with `shard_gallery` takes each rank's slice of the gallery
            (`shard_slice`); every rank then returns the single-process value, the same float.
        shard_gallery: with `group`, `gallery` and `gallery_labels` are this rank's slice.

    Returns:
        The mean AP over the queries that count (0.0 if none does); with `return_ap`,
        (mean, per-query APs as a (Q,) float64 tensor, NaN for a query left out).

    Raises:
        DataError: inputs that do not fit together (not 2-D, no rows, NaN or Inf, widths or
            label forms that differ, a label row count that is not the embeddings'), or that
            are on different devices.
        ConfigError: k below 1; `shard_gallery` without `group`; `group` without an initialised
            torch.distributed, or of another kind.
        BackendError: an unknown backend, or one that cannot run here.

    Example:
        >>> import torch
        >>> from drcl_fast.retrieval import evaluate_map
        >>> query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> gallery = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.9, 0.2], [0.1, 0.9]])
        >>> round(evaluate_map(query, [0, 1], gallery, [0, 1, 1, 0]), 4)   # hits at ranks 1 and 3
        0.8333
        >>> evaluate_map(query, [0, 1], gallery, [0, 1, 1, 0], k=1)
        1.0
        >>> mean, ap = evaluate_map(query, [0, 1], gallery, [0, 1, 1, 0], return_ap=True)
        >>> ap
        tensor([0.8333, 0.8333], dtype=torch.float64)
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


def evaluate_directions(embeddings: Sequence[ArrayLike], labels: Sequence[ArrayLike], names: Sequence[str],
                        k: int | None = None, backend: str = "auto",
                        progress: bool = False, max_memory: int | None = None,
                        group: torch.distributed.ProcessGroup | str | bool | None = None,
                        shard_gallery: bool = False) -> DirectionResult:
    """MAP@k for every ordered pair (query modality i, gallery modality j), i != j, as the DRCL paper reports.

    Args:
        embeddings: one (n_m, D) embedding array per modality.
        labels: one class-id vector or 0/1 matrix per modality, as `evaluate_map` takes them.
        names: distinct modality names; directions are named "query->gallery".
        k, backend, max_memory: as for `evaluate_map`.
        progress: a progress bar over the directions.
        group, shard_gallery: as for `evaluate_map`, with every rank passing every modality
            whole: with `shard_gallery` each rank ranks only its `shard_slice` of each gallery.

    Returns:
        A DirectionResult: `matrix` (K x K, [query, gallery], NaN on the diagonal), `directions`
        ({"query->gallery": MAP}, query-major order) and their `mean`; `format_table` prints it,
        `metrics_dict` gives its metrics.json form.

    Raises:
        DataError, ConfigError, BackendError: as for `evaluate_map`; the message names the direction.
        ValueError: not one embedding array, label array and distinct name per modality, or fewer
            than two modalities.

    Example:
        >>> import torch
        >>> from drcl_fast.retrieval import evaluate_directions
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = [torch.arange(6) % 3] * 3
        >>> embeddings = [torch.randn(6, 4, generator=g) + 2 * torch.eye(4)[y] for y in labels]
        >>> result = evaluate_directions(embeddings, labels, ["image", "text", "audio"])
        >>> list(result.directions)
        ['image->text', 'image->audio', 'text->image', 'text->audio', 'audio->image', 'audio->text']
        >>> round(result.mean, 4), round(result.directions["image->text"], 4)
        (0.8204, 0.7833)
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
