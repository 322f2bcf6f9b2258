"""The `triton` backend: ranking on the GPU with bounded memory.

- MAP@k for k <= 128 (float32 inputs): one fused kernel computes the scores and
  keeps a running top-k per query (kernels/map_topk.py); the (Q, N) score
  matrix is never formed.
- MAP@all, larger k and float64 inputs: a segmented sort. Each query chunk's
  scores come from torch.mm on the reference's unit rows (the same scores the
  reference ranks) and are sorted stably; no relevance, gather or cumulative-sum
  matrices follow.
Both then walk the ranking once with bitmask relevance (kernels/map_ranked.py).

Dispatch sends CUDA tensors here, and CPU tensors only under TRITON_INTERPRET=1,
where the same functions run in Triton's interpreter: how the test suite exercises them.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch

from drcl_fast.retrieval import labels as label_codes
from drcl_fast.retrieval import reference

# The kernels import Triton, which takes a while: only on first use, never for CPU-only work.
AVAILABLE = importlib.util.find_spec("triton") is not None

DEFAULT_MAX_MEMORY = 2**30
# Sort path, per (query, item) pair: float32 scores, sorted values, int64 indices
# and the sort's own double buffers.
_SORT_BYTES_PER_PAIR = 32
# Fused path: no (Q, N) matrix; a chunk only bounds the per-slice key lists.
_FUSED_CHUNK = 8192


def _ranked_chunks(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int | None,
                   max_memory: int, walk: Callable[[torch.Tensor, torch.Tensor, label_codes.EncodedLabels],
                                                   torch.Tensor]) -> torch.Tensor:
    """walk(order, query_codes_of_chunk, codes) per query chunk, where order holds the
    chunk's first min(k, N) ranked gallery indices (all N when k is None)."""
    from drcl_fast.kernels import map_topk
    q, yq, g, yg = reference.check_inputs(query, query_labels, gallery, gallery_labels, k)
    codes = label_codes.encode(yq, yg)
    q, g = reference.unit_rows(q, g)
    top = g.shape[0] if k is None else min(k, g.shape[0])
    fused = top <= map_topk.LARGEST_K and q.dtype == torch.float32
    step = _FUSED_CHUNK if fused else reference.auto_chunk_size(q.shape[0], g.shape[0], max_memory,
                                                                _SORT_BYTES_PER_PAIR)
    out = []
    for start in range(0, q.shape[0], step):
        chunk = q[start:start + step]
        if fused:
            order = map_topk.topk_indices(chunk, g, top)
        else:
            scores = reference.chunk_scores(chunk, g)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]
        out.append(walk(order, codes.query[start:start + step], codes))
    return torch.cat(out)


def average_precisions(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int | None = None,
                       max_memory: int = DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """Per-query AP (float64), as reference.average_precisions; NaN = left out (multi-label, r = 0)."""
    from drcl_fast.kernels import map_ranked
    return _ranked_chunks(query, query_labels, gallery, gallery_labels, k, max_memory,
                          lambda order, query_codes, codes: map_ranked.average_precisions(
                              order, query_codes, codes.gallery, codes.multilabel))


def hits_at(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, cutoffs: Any,
            max_memory: int = DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """(Q, len(cutoffs)) int64 relevant items among the first cutoffs[j], as reference.hits_at."""
    from drcl_fast.kernels import map_ranked
    cut = reference.check_cutoffs(cutoffs, len(gallery))
    return _ranked_chunks(query, query_labels, gallery, gallery_labels, int(cut[-1]), max_memory,
                          lambda order, query_codes, codes: map_ranked.hits_at(
                              order, query_codes, codes.gallery, cut))
