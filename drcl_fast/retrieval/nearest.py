"""Cosine top-k search (`drcl_fast.retrieval.topk`): each query's k nearest gallery items, best first.

`topk` is exact and ranks as the MAP evaluator does (retrieval/reference.py): unit
rows, the float32 scores of `reference.chunk_scores` (float64 for float64 inputs),
higher score first and equal scores by lower gallery index. Its scores are those
very bits, whichever backend runs (the fused Triton kernel excepted, see `topk`):

- "torch": per query chunk, the scores against the whole gallery and a stable sort.
- "cpp": per chunk of queries, the scores of one block of gallery items at a time
  (one torch.mm into a reused buffer that stays in cache), merged by C++ into running
  top-k heaps (csrc/topk.h), so no (Q, N) matrix is ever made and only k items are sorted.
- "triton": the fused similarity and top-k kernel of MAP@k (kernels/map_topk.py).

`approximate_topk` searches with a faiss index instead (the `faiss` extra), and
`recall_at_k` says how much of the exact result it found.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from drcl_fast.errors import BackendError, ConfigError, DataError
from drcl_fast.retrieval import cpp, dispatch, reference
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.retrieval.sharded import SCORE_ALIGN

__all__ = ["topk", "approximate_topk", "recall_at_k"]

# BLAS sums a float64 row of a trailing partial block of query rows differently (measured
# with MKL: blocks of 4 rows), so float64 query chunks start at multiples of this, a
# multiple of the 4- to 48-row blocks of BLAS kernels. float32 rows do not depend on it.
ROW_ALIGN = 48

# The "torch" backend per (query, item) pair: scores, sorted scores, int64 indices and the
# sort's own buffers.
_SORT_BYTES_PER_PAIR = {torch.float32: 32, torch.float64: 48}

# The "cpp" backend's tile: queries per chunk and gallery items per block (a multiple of
# SCORE_ALIGN, so that every block's scores are the whole gallery's bits). A block of
# scores is written by torch.mm and read once by the merge while it is still in cache.
_CPP_ROWS = {torch.float32: 512, torch.float64: 240}
_CPP_WIDTH = 21 * SCORE_ALIGN

# The fused Triton kernel's query chunk: it bounds the per-slice key lists only.
_FUSED_CHUNK = 8192


# ---------------------------------------------------------------- checks

def _checked(queries: Any, gallery: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (queries, gallery) on one device, as reference.check_inputs validates features."""
    device = reference._common_device(queries, gallery)
    q = reference._check_features(reference._to_tensor(queries, device), "queries")
    g = reference._check_features(reference._to_tensor(gallery, device), "gallery")
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query embeddings have width {q.shape[1]} but gallery embeddings have "
                        f"width {g.shape[1]}; both must come from the same common space")
    _check_k(k, g.shape[0])
    return q, g


def _check_k(k: Any, gallery_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k must be an int between 1 and the gallery size {gallery_size}, got {k!r}")
    if not 1 <= k <= gallery_size:
        raise ConfigError(f"k must be between 1 and the gallery size {gallery_size}, got k={k}; "
                          f"pass a k in that range (k={gallery_size} ranks the whole gallery)")


# ---------------------------------------------------------------- chunks whose scores are the whole product's bits

def query_chunks(num_queries: int, step: int, dtype: torch.dtype) -> list[tuple[int, int]]:
    """[start, stop) of each query chunk of about `step` rows.

    float64 chunks are whole multiples of ROW_ALIGN rows. A last chunk of fewer than
    reference.MIN_SCORE_ROWS rows joins the one before: padded alone (chunk_scores), its
    float64 rows would leave the partial row block they sit in within the whole product.
    """
    if dtype == torch.float64:
        step = -(-step // ROW_ALIGN) * ROW_ALIGN
    starts = list(range(0, num_queries, step))
    if len(starts) > 1 and num_queries - starts[-1] < reference.MIN_SCORE_ROWS:
        starts.pop()
    return list(zip(starts, [*starts[1:], num_queries]))


def gallery_blocks(gallery_size: int, width: int) -> list[tuple[int, int]]:
    """[start, stop) of each block of `width` gallery items (a multiple of SCORE_ALIGN).

    Blocks start at multiples of SCORE_ALIGN, so each item keeps its column position
    modulo BLAS's block widths, and a last block narrower than SCORE_ALIGN joins the one
    before (a narrow product takes other code): a block's scores are then the bits of
    the whole gallery's product (the rule of sharded.score_window; tests/retrieval/test_topk.py).
    """
    starts = list(range(0, gallery_size, width))
    if len(starts) > 1 and gallery_size - starts[-1] < SCORE_ALIGN:
        starts.pop()
    return list(zip(starts, [*starts[1:], gallery_size]))


def _padded(chunk: torch.Tensor) -> torch.Tensor:
    """The chunk with zero rows up to reference.MIN_SCORE_ROWS, as chunk_scores computes it."""
    missing = reference.MIN_SCORE_ROWS - chunk.shape[0]
    return chunk if missing <= 0 else torch.cat([chunk, chunk.new_zeros(missing, chunk.shape[1])])


# ---------------------------------------------------------------- the backends: f(q, g, k, max_memory=), checked inputs

def search_torch(q: torch.Tensor, g: torch.Tensor, k: int,
                 max_memory: int = reference.DEFAULT_MAX_MEMORY) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: per query chunk, chunk_scores against the whole gallery, sorted stably."""
    return _sorted(*reference.unit_rows(q, g), k, max_memory)


def _sorted(q: torch.Tensor, g: torch.Tensor, k: int, max_memory: int) -> tuple[torch.Tensor, torch.Tensor]:
    """search_torch on unit rows."""
    step = reference.auto_chunk_size(q.shape[0], g.shape[0], max_memory, _SORT_BYTES_PER_PAIR[q.dtype])
    scores, indices = [], []
    for start, stop in query_chunks(q.shape[0], step, q.dtype):
        ranked = torch.sort(reference.chunk_scores(q[start:stop], g), dim=1, descending=True, stable=True)
        # Copies: a view would keep each chunk's whole sorted rows alive until the end.
        scores.append(ranked.values[:, :k].clone())
        indices.append(ranked.indices[:, :k].clone())
    return torch.cat(scores), torch.cat(indices)


def _cpp_tile(num_queries: int, dtype: torch.dtype, max_memory: int) -> tuple[int, int]:
    """(queries per chunk, gallery items per block): the tuned tile, narrowed to fit max_memory."""
    rows = min(num_queries, _CPP_ROWS[dtype])
    # The buffer holds the tallest chunk (padded, or taking in a short last one) against the
    # widest block (taking in a narrow last one).
    per_column = (max(rows, reference.MIN_SCORE_ROWS) + reference.MIN_SCORE_ROWS - 1) * dtype.itemsize
    fits = (max_memory // per_column - (SCORE_ALIGN - 1)) // SCORE_ALIGN * SCORE_ALIGN
    return rows, max(SCORE_ALIGN, min(_CPP_WIDTH, fits))


def search_cpp(q: torch.Tensor, g: torch.Tensor, k: int,
               max_memory: int = reference.DEFAULT_MAX_MEMORY) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of one query chunk and one gallery block at a time, merged by C++ into running lists.

    max_memory bounds the score buffer (beyond it: the unit copies of the inputs and the
    results); it is never narrower than SCORE_ALIGN gallery items.
    """
    if cpp._map_cpp is None:
        raise BackendError("drcl_fast.retrieval._map_cpp is not built; reinstall the package where a C++ compiler "
                           "with OpenMP is present, or use backend='torch'")
    if q.device.type != "cpu":
        raise BackendError(f"topk: backend 'cpp' searches CPU tensors, got {q.device.type} tensors; "
                           f"pass backend='auto' (or 'triton', 'torch') or move the inputs to the CPU")
    q, g = reference.unit_rows(q, g)
    rows, width = _cpp_tile(q.shape[0], q.dtype, max_memory)
    chunks, blocks = query_chunks(q.shape[0], rows, q.dtype), gallery_blocks(g.shape[0], width)
    tallest = max(max(stop - start, reference.MIN_SCORE_ROWS) for start, stop in chunks)
    buffer = q.new_empty(tallest * max(stop - start for start, stop in blocks))
    scores = torch.full((q.shape[0], k), -math.inf, dtype=q.dtype)
    indices = torch.full((q.shape[0], k), -1, dtype=torch.int64)
    threads = torch.get_num_threads()  # the same OMP_NUM_THREADS budget as torch's own kernels
    for start, stop in chunks:
        chunk = _padded(q[start:stop])
        best, best_indices = scores[start:stop].numpy(), indices[start:stop].numpy()
        for low, high in blocks:
            block = buffer[:chunk.shape[0] * (high - low)].view(chunk.shape[0], high - low)
            torch.mm(chunk, g[low:high].T, out=block)
            cpp._map_cpp.topk_merge(block[:stop - start].numpy(), low, best, best_indices, threads)
        cpp._map_cpp.topk_sort(best, best_indices, threads)
    return scores, indices


def search_triton(q: torch.Tensor, g: torch.Tensor, k: int,
                  max_memory: int = triton_backend.DEFAULT_MAX_MEMORY) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel for k <= LARGEST_K on float32; the "torch" sort path otherwise."""
    from drcl_fast.kernels import map_topk
    q, g = reference.unit_rows(q, g)
    if k > map_topk.LARGEST_K or q.dtype != torch.float32:
        return _sorted(q, g, k, max_memory)
    found = [map_topk.topk(q[start:start + _FUSED_CHUNK], g, k) for start in range(0, q.shape[0], _FUSED_CHUNK)]
    return torch.cat([s for s, _ in found]), torch.cat([i for _, i in found])


def search_backends() -> dict[str, Any]:
    """The implementations by backend name, None where not usable in this process (dispatch.topk)."""
    return {"torch": search_torch,
            "cpp": search_cpp if cpp.AVAILABLE else None,
            "triton": search_triton if triton_backend.AVAILABLE else None}


# ---------------------------------------------------------------- the public functions

def topk(queries: Any, gallery: Any, k: int, backend: str = "auto",
         max_memory: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k most cosine-similar gallery items, best first, exactly.

    Ranks as the MAP evaluator does: rows L2-normalised, scores of
    `reference.chunk_scores` (float32; float64 when an input is float64), higher score
    first and, among equal scores, the lower gallery index first.

    Args:
        queries: (Q, D) embeddings, a tensor or numpy array (float16/bfloat16 are
            ranked in float32).
        gallery: (N, D) embeddings on the same device as `queries`.
        k: how many items per query, 1 <= k <= N.
        backend: "auto" (cpp on a CPU, triton on CUDA), "torch", "cpp" (CPU tensors) or
            "triton" (CUDA tensors, or CPU ones under TRITON_INTERPRET=1).
        max_memory: bytes for one chunk's working set (None: the backend's default):
            a query chunk's scores and sort ("torch", and "triton" beyond its kernel),
            the score buffer ("cpp", at least SCORE_ALIGN items wide). float64 query
            chunks hold at least ROW_ALIGN queries whatever it says.

    Returns:
        (scores, indices): (Q, k) scores in the ranking dtype, the very bits
        `reference.chunk_scores` gives those items, and (Q, k) int64 gallery indices,
        both on the inputs' device. The fused Triton kernel (float32, k <= 128)
        computes its own dot products: on a GPU a score can differ from torch.mm's in
        the last bit, and a near-tie can then swap (docs/evaluation.md).

    Raises:
        DataError: an input is not 2-D, is empty, holds NaN or infinite values, the
            widths differ, or the inputs are on different devices.
        ConfigError: k is not an int between 1 and N.
        BackendError: the backend is unknown or cannot run here.
    """
    q, g = _checked(queries, gallery, k)
    impl = dispatch.topk(backend, q.device)
    return impl(q, g, int(k), **dispatch.memory_budget(max_memory))


# ---------------------------------------------------------------- approximate search (faiss)

_INDEX_PARAMS = {"flat": set(), "hnsw": {"M", "ef_construction", "ef_search"}, "ivf": {"nlist", "nprobe"}}


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ConfigError("approximate_topk needs faiss: pip install \"drcl_fast[faiss]\" "
                          "(or use topk, which is exact and needs nothing more)") from error
    return faiss


def _ivf_lists(gallery_size: int) -> int:
    """About 4 sqrt(N) inverted lists, but no more than leave each the 39 training points faiss asks for."""
    return max(1, min(round(4 * math.sqrt(gallery_size)), gallery_size // 39))


def _build_index(faiss: Any, kind: str, gallery: np.ndarray, k: int, params: dict[str, Any]) -> Any:
    """A faiss inner-product index of `kind` holding the unit gallery rows, set up for search."""
    if kind not in _INDEX_PARAMS:
        raise ConfigError(f"index must be one of {', '.join(_INDEX_PARAMS)}, got {kind!r}")
    unknown = set(params) - _INDEX_PARAMS[kind]
    if unknown:
        allowed = ", ".join(sorted(_INDEX_PARAMS[kind])) or "no parameters"
        raise ConfigError(f"index {kind!r} takes {allowed}; got {', '.join(sorted(unknown))}")
    dim = gallery.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params.get("M", 32)), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params.get("ef_construction", 200))
        index.hnsw.efSearch = int(params.get("ef_search", max(64, 2 * k)))
    else:
        nlist = int(params.get("nlist", _ivf_lists(gallery.shape[0])))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(gallery)
        index.nprobe = int(params.get("nprobe", max(1, round(math.sqrt(nlist)))))
    index.add(gallery)
    return index


def approximate_topk(queries: Any, gallery: Any, k: int, index: str = "hnsw",
                     **params: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k most cosine-similar gallery items by a faiss index, best first.

    Args:
        queries, gallery, k: as for `topk` (validated the same way).
        index: "flat" (exact IndexFlatIP: faiss's own products and tie order),
            "hnsw" (IndexHNSWFlat; params M=32, ef_construction=200,
            ef_search=max(64, 2k)) or "ivf" (IndexIVFFlat; params nlist about
            4 sqrt(N), at most N / 39, and nprobe about sqrt(nlist)).
        params: the index's parameters, as named above.

    Returns:
        (scores, indices): (Q, k) float32 inner products of the unit rows and int64
        gallery indices, on the inputs' device; index -1 where the index found fewer
        than k items. Rows are normalised and searched in float32 (faiss's only type).

    Raises:
        ConfigError: faiss is not installed, an unknown index or parameter, or a bad k.
        DataError: as for `topk`.
    """
    faiss = _faiss()
    q, g = _checked(queries, gallery, k)
    device = q.device
    q, g = (x.float().cpu().numpy() for x in reference.unit_rows(q, g))
    scores, indices = _build_index(faiss, index, g, k, params).search(q, k)
    return torch.from_numpy(scores).to(device), torch.from_numpy(indices).to(device)


def recall_at_k(found_indices: Any, exact_indices: Any) -> float:
    """Share of each query's exact top k (a row of `exact_indices`) that `found_indices`'s row
    holds, averaged over the queries: 1.0 when the approximate search found everything."""
    found, exact = (torch.as_tensor(x).cpu() for x in (found_indices, exact_indices))
    if found.dim() != 2 or exact.dim() != 2 or found.shape[0] != exact.shape[0] or exact.shape[1] == 0:
        raise DataError(f"found_indices and exact_indices must be (Q, k) index arrays with the same Q, "
                        f"got shapes {tuple(found.shape)} and {tuple(exact.shape)}")
    hit = (exact[:, :, None] == found[:, None, :]).any(2)
    return float(hit.double().mean())
