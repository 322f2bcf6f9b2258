"""Reference MAP evaluator: vectorised PyTorch, bounded memory.

Every faster backend is checked against this file, so it favours being
obviously right over being fast: each query chunk is ranked with a full
stable sort and scored with cumulative sums, with no per-query Python loop.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from drcl_fast.errors import ConfigError, DataError

# An array as the public API takes it (embeddings, labels, a model's input rows): a tensor, a numpy
# array, or nested sequences of numbers, which numpy.asarray converts (`_to_tensor`).
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float], Sequence[Sequence[float]]]

DEFAULT_MAX_MEMORY = 256 * 2**20

# Upper bound on the bytes one (query, gallery item) pair costs inside a chunk:
# scores, sorted values and int64 indices from the sort, the relevance mask
# (plus the float32 label product when multi-label), and the float64 cumsum /
# precision temporaries over the top k.
_BYTES_PER_PAIR = 64


def _to_tensor(x: ArrayLike, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.as_tensor(np.asarray(x), device=device)


def _common_device(query: Any, gallery: Any) -> torch.device:
    # Labels usually arrive as numpy, so only the features decide the device.
    devices = {x.device for x in (query, gallery) if isinstance(x, torch.Tensor)}
    if len(devices) > 1:
        raise DataError(f"query is on {query.device} but gallery is on {gallery.device}; "
                         f"move both to the same device")
    return devices.pop() if devices else torch.device("cpu")


def _check_features(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise DataError(f"{name} must be a 2-D (n, d) array of embeddings, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{name} has no rows; pass at least one embedding")
    # min and max propagate NaN and show infinities: one reduction pass, no (n, d) mask.
    if x.numel() and not all(map(math.isfinite, (float(v) for v in torch.aminmax(x)))):
        # A NaN has no rank; better to stop than to let each backend place it its own way.
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise DataError(f"{name} has NaN or infinite values in {bad} of its {x.shape[0]} rows; "
                        f"fix or drop those embeddings before evaluating")
    # Low precision would create spurious ties; float64 is kept for users who ask for it.
    x = x if x.dtype == torch.float64 else x.float()
    # Row-major whatever the source: BLAS sums a column-major operand (what scipy's loadmat returns, a
    # transposed view) in another order, so the same embeddings would score, and tie, differently.
    return x.contiguous()


def _check_labels(y: torch.Tensor, name: str, rows: int, features_name: str) -> torch.Tensor:
    if y.dim() == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.dim() not in (1, 2):
        raise DataError(f"{name} must be a vector of class ids (n,) or a 0/1 matrix (n, C), "
                         f"got shape {tuple(y.shape)}")
    if y.shape[0] != rows:
        raise DataError(f"{name} has {y.shape[0]} rows but {features_name} has {rows}; "
                         f"pass one label row per embedding")
    # float32 so the per-chunk label product can use a matmul on any device;
    # counts of shared labels stay exact far beyond any realistic class count.
    return (y != 0).float() if y.dim() == 2 else y


def check_inputs(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                 k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated tensors on one device: features in float32 (or float64), labels
    as a class-id vector or a float32 0/1 matrix. Idempotent."""
    if k is not None and k < 1:
        raise ConfigError(f"k must be None (MAP@all) or a positive int, got {k!r}")
    device = _common_device(query, gallery)
    q = _check_features(_to_tensor(query, device), "query")
    g = _check_features(_to_tensor(gallery, device), "gallery")
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query embeddings have width {q.shape[1]} but gallery embeddings have "
                         f"width {g.shape[1]}; both must come from the same common space")
    yq = _check_labels(_to_tensor(query_labels, device), "query_labels", q.shape[0], "query")
    yg = _check_labels(_to_tensor(gallery_labels, device), "gallery_labels", g.shape[0], "gallery")
    if yq.dim() != yg.dim():
        kinds = {1: "class-id vector", 2: "multi-label matrix"}
        raise DataError(f"query_labels is a {kinds[yq.dim()]} but gallery_labels is a "
                         f"{kinds[yg.dim()]}; pass both in the same form")
    if yq.dim() == 2 and yq.shape[1] != yg.shape[1]:
        raise DataError(f"query_labels has {yq.shape[1]} classes but gallery_labels has "
                         f"{yg.shape[1]}; both must use the same label space")
    return q, yq, g, yg


def unit_rows(query: torch.Tensor, gallery: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked embeddings as unit rows in one dtype: every backend ranks their products."""
    q, g = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype), g.to(dtype)


# Fewer query rows than this make BLAS take other code paths (a matrix-vector product for
# one row), whose sums differ in the last bit from those of a larger chunk.
MIN_SCORE_ROWS = 16


def chunk_scores(chunk: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine scores of a chunk of unit query rows against the unit gallery rows: `chunk @ gallery.T`.

    A chunk of fewer than MIN_SCORE_ROWS rows is padded with zero rows, so that a
    query's float32 scores, and so the order of its near-ties, do not depend on how
    the queries were chunked (max_memory, the last chunk, the backend's chunk size).
    """
    rows = chunk.shape[0]
    if rows >= MIN_SCORE_ROWS:
        return chunk @ gallery.T
    padded = torch.cat([chunk, chunk.new_zeros(MIN_SCORE_ROWS - rows, chunk.shape[1])])
    return (padded @ gallery.T)[:rows]


def relevance(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """(q, N) bool: same class id, or at least one shared label (0/1 matrices)."""
    if query_labels.dim() == 2:
        return (query_labels @ gallery_labels.T) > 0
    return query_labels[:, None] == gallery_labels[None, :]


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size must be None (automatic) or a positive int, got {chunk_size!r}")


def check_cutoffs(cutoffs: Any, gallery_size: int) -> torch.Tensor:
    """Rank cutoffs as a strictly increasing int64 vector within 1..gallery_size."""
    cut = torch.as_tensor(np.asarray(cutoffs)).reshape(-1)
    if cut.numel() == 0 or cut.is_floating_point() or cut.dtype == torch.bool:
        raise ConfigError(f"cutoffs must be a non-empty list of integer ranks, got {cutoffs!r}")
    cut = cut.long()
    if bool((cut < 1).any()) or bool((cut > gallery_size).any()) or bool((cut[1:] <= cut[:-1]).any()):
        raise ConfigError(f"cutoffs must increase strictly and lie between 1 and the gallery size "
                          f"{gallery_size}; got {cut.tolist()[:10]}{' ...' if cut.numel() > 10 else ''}")
    return cut


def ranked_hits(scores: torch.Tensor, relevant: torch.Tensor, top: int) -> torch.Tensor:
    """(q, top) bool: relevance of each query's first `top` items, best first.

    Ties in `scores` rank by gallery index, lowest first (a stable sort)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]
    return relevant.gather(1, order)


def ap_from_hits(hit: torch.Tensor, skip_empty: bool) -> torch.Tensor:
    """Per-query AP (float64) from (q, top) relevance in rank order."""
    # float64 counts are exact and make the precisions below float64 without a cast.
    hits_so_far = hit.cumsum(1, dtype=torch.float64)
    ranks = torch.arange(1, hit.shape[1] + 1, dtype=torch.float64, device=hit.device)
    precision_sum = torch.where(hit, hits_so_far / ranks, 0.0).sum(1)
    found = hits_so_far[:, -1]
    ap = precision_sum / found.clamp(min=1)
    if skip_empty:
        ap[found == 0] = float("nan")
    return ap


def average_precisions_from_scores(scores: torch.Tensor, relevant: torch.Tensor,
                                   k: int | None = None, skip_empty: bool = False) -> torch.Tensor:
    """Per-query AP (float64) of a (q, N) score matrix and (q, N) relevance mask.

    Ties in `scores` rank by gallery index, lowest first. Queries with no relevant
    item in the top k get AP 0, or NaN when `skip_empty` (multi-label convention).
    """
    n = scores.shape[1]
    return ap_from_hits(ranked_hits(scores, relevant, n if k is None else min(k, n)), skip_empty)


def hits_at_from_scores(scores: torch.Tensor, relevant: torch.Tensor, cutoffs: torch.Tensor) -> torch.Tensor:
    """(q, len(cutoffs)) int64: relevant items among each query's first cutoffs[j] items."""
    found = ranked_hits(scores, relevant, int(cutoffs[-1])).cumsum(1)
    return found[:, cutoffs.to(found.device) - 1]


def auto_chunk_size(num_queries: int, gallery_size: int, max_memory: int = DEFAULT_MAX_MEMORY,
                    bytes_per_pair: int = _BYTES_PER_PAIR) -> int:
    """Queries per chunk so one chunk's working set stays under `max_memory` bytes."""
    return max(1, min(num_queries, max_memory // (bytes_per_pair * gallery_size)))


def _over_chunks(q: torch.Tensor, yq: torch.Tensor, g: torch.Tensor, yg: torch.Tensor,
                 chunk_size: int | None, max_memory: int,
                 per_chunk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """per_chunk(scores, relevant) over query chunks, concatenated."""
    check_chunk_size(chunk_size)
    q, g = unit_rows(q, g)
    step = chunk_size or auto_chunk_size(q.shape[0], g.shape[0], max_memory)
    return torch.cat([per_chunk(chunk_scores(q[start:start + step], g), relevance(yq[start:start + step], yg))
                      for start in range(0, q.shape[0], step)])


def average_precisions(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                       k: int | None = None, chunk_size: int | None = None,
                       max_memory: int = DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """Per-query average precision (float64, on the inputs' device) of cosine retrieval.

    `k=None` is MAP@all. Multi-label queries with no relevant item in the top k
    are NaN (left out of the mean); single-label ones are 0 (counted).
    """
    q, yq, g, yg = check_inputs(query, query_labels, gallery, gallery_labels, k)
    skip_empty = yq.dim() == 2
    return _over_chunks(q, yq, g, yg, chunk_size, max_memory,
                        lambda scores, relevant: average_precisions_from_scores(scores, relevant, k, skip_empty))


def hits_at(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, cutoffs: Any,
            chunk_size: int | None = None, max_memory: int = DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """(Q, len(cutoffs)) int64: relevant items among each query's first cutoffs[j] ranked items."""
    q, yq, g, yg = check_inputs(query, query_labels, gallery, gallery_labels)
    cut = check_cutoffs(cutoffs, g.shape[0])
    return _over_chunks(q, yq, g, yg, chunk_size, max_memory,
                        lambda scores, relevant: hits_at_from_scores(scores, relevant, cut))
