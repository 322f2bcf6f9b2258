"""The `cpp` backend: PyTorch scores a chunk of queries, C++ ranks it.

The similarity product is one BLAS call per chunk (torch.mm on the unit rows
the reference ranks, so both see the same float32 scores); the C++ extension
(csrc/map_rank.cpp) ranks each row exactly with a bucket sort — a selection
for MAP@k — and walks it, queries spread over OpenMP threads. No (Q, N)
relevance, index or cumulative-sum matrices are built.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from drcl_fast.errors import BackendError
from drcl_fast.retrieval import labels as label_codes
from drcl_fast.retrieval import reference

try:
    from drcl_fast.retrieval import _map_cpp
except ImportError:  # not built (see csrc/README.md); dispatch falls back to torch
    _map_cpp = None

AVAILABLE = _map_cpp is not None

# One chunk holds its float32 scores (float64 when the inputs are), plus a
# margin; the per-thread scratch (about 14 bytes per gallery item) is small beside it.
_BYTES_PER_SCORE_PAIR = {torch.float32: 6, torch.float64: 12}


def _over_chunks(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int | None,
                 max_memory: int, rank: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> torch.Tensor:
    """rank(scores, query_codes, gallery_codes) per query chunk, as one tensor on the inputs' device."""
    if _map_cpp is None:
        raise BackendError("drcl_fast.retrieval._map_cpp is not built; reinstall the package where a C++ compiler "
                           "with OpenMP is present, or use backend='torch'")
    q, yq, g, yg = reference.check_inputs(query, query_labels, gallery, gallery_labels, k)
    codes = label_codes.encode(yq, yg)
    query_codes, gallery_codes = codes.query.cpu().numpy(), codes.gallery.cpu().numpy()
    q, g = reference.unit_rows(q, g)
    step = reference.auto_chunk_size(q.shape[0], g.shape[0], max_memory, _BYTES_PER_SCORE_PAIR[q.dtype])
    out = [torch.from_numpy(rank(reference.chunk_scores(q[start:start + step], g).cpu().numpy(),
                                 query_codes[start:start + step], gallery_codes))
           for start in range(0, q.shape[0], step)]
    return torch.cat(out).to(q.device)


def average_precisions(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int | None = None,
                       max_memory: int = reference.DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """Per-query AP (float64), as reference.average_precisions; NaN = left out (multi-label, r = 0)."""
    threads = torch.get_num_threads()  # the same OMP_NUM_THREADS budget as torch's own kernels

    def rank(scores: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray) -> np.ndarray:
        top = scores.shape[1] if k is None else min(k, scores.shape[1])
        return _map_cpp.average_precisions(scores, query_codes, gallery_codes, top,
                                           query_codes.ndim == 2, threads)
    return _over_chunks(query, query_labels, gallery, gallery_labels, k, max_memory, rank)


def hits_at(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, cutoffs: Any,
            max_memory: int = reference.DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """(Q, len(cutoffs)) int64 relevant items among the first cutoffs[j], as reference.hits_at."""
    threads = torch.get_num_threads()
    cut = reference.check_cutoffs(cutoffs, len(gallery)).numpy()

    def rank(scores: np.ndarray, query_codes: np.ndarray, gallery_codes: np.ndarray) -> np.ndarray:
        return _map_cpp.hits_at(scores, query_codes, gallery_codes, cut, threads)
    return _over_chunks(query, query_labels, gallery, gallery_labels, None, max_memory, rank)
