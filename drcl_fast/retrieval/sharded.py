"""Exact MAP over the ranks of a torch.distributed group (launched with torchrun).

Two ways to spread one evaluation, both giving the single-process result of the
same backend as the same Python float (docs/evaluation.md, "Sharded evaluation"):

- queries sharded (the default): every rank passes the whole query and gallery
  arrays; each ranks a contiguous slice of the queries with the ordinary backend,
  and the per-query APs are all-gathered (8 bytes a query), so that the caller takes
  the very mean a single process takes, over the same float64 values in the same order.
- gallery sharded (``shard_gallery=True``): every rank passes the whole query set
  and only its contiguous slice of the gallery (rank r's slice follows those of the
  ranks before it; the offsets come from all-gathered slice sizes, so slices may have
  any sizes, empty ones included). Per query chunk, MAP@k merges each rank's top k
  under the tie rule (higher score, then lower global gallery index); MAP@all counts
  for every relevant item the items of every slice ranked before it, so each gets its
  global rank. A chunk's APs are then summed by one rank (chunks go round-robin) in
  the order the backend itself sums them.

Exactness rests on four facts, each checked by tests/retrieval/test_sharded_map.py: the scores
of a slice are the bits of the whole gallery's product (`score_window`); they are
computed in the backend's own query chunks (`backend_chunk`); merging and counting
implement the tie rule exactly (`item_keys`); and the APs are summed as the chosen
backend sums them (`ap_from_ranks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from drcl_fast.errors import ConfigError, DataError, DRCLError
from drcl_fast.retrieval import cpp, dispatch, reference
from drcl_fast.retrieval import triton as triton_backend

__all__ = ["sharded_average_precisions", "shard_slice", "resolve_group"]

# BLAS computes a product in blocks of columns, and a column in a partial block (at a
# product's end, or in a narrow product) can take another code path whose float sums differ
# in the last bit. Measured with MKL on this project's CPU: float32 products narrower than 12
# columns, and float64 columns in a trailing block of fewer than 12. A slice is therefore scored
# inside a window of the whole gallery's columns (zero rows outside the slice) that starts at a
# multiple of SCORE_ALIGN, so every item keeps its column position modulo any block width that
# divides it; that ends where the gallery ends or at such a multiple; and that is at least
# SCORE_ALIGN wide unless the whole gallery is narrower (the window is then the whole gallery).
SCORE_ALIGN = 384  # a multiple of the 4, 6, 8, 12, 16, 24, 32, 48, 64 and 128-wide blocks of BLAS kernels

_SUMMATIONS = {reference.average_precisions: "torch", cpp.average_precisions: "cpp",
               triton_backend.average_precisions: "triton"}


# ---------------------------------------------------------------- the group and what its ranks exchange

class Exchange(Protocol):
    """The collectives the sharded evaluation needs, in this rank's view of the group."""

    rank: int
    size: int

    def objects(self, value: Any) -> list[Any]:
        """Every rank's picklable `value`, in rank order."""

    def gather(self, flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """Every rank's 1-D tensor (rank r's has sizes[r] elements), in rank order."""

    def reduce_sum(self, tensor: torch.Tensor, owner: int) -> torch.Tensor | None:
        """The element-wise sum over ranks of `tensor` (same shape everywhere) on rank `owner`, else None."""


class _TorchExchange:
    """Exchange over a torch.distributed process group (gloo: CPU tensors, NCCL: CUDA tensors)."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if self.rank < 0:
            raise ConfigError("this process is not a member of the process group passed as group=; "
                              "pass a group this rank belongs to, or group='world'")
        # NCCL moves only CUDA tensors; gloo takes CPU tensors everywhere.
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend(group) == "nccl" else torch.device("cpu"))

    def objects(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def gather(self, flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        width = max(sizes)
        if width == 0:
            return [flat.new_empty(0) for _ in sizes]
        # all_gather moves equal sizes only: the buffer is padded, and each part trimmed on arrival.
        send = torch.zeros(width, dtype=flat.dtype, device=self.device)
        send[:flat.numel()] = flat
        parts = [torch.empty_like(send) for _ in sizes]
        dist.all_gather(parts, send, group=self.group)
        return [part[:n].to(flat.device) for part, n in zip(parts, sizes)]

    def reduce_sum(self, tensor: torch.Tensor, owner: int) -> torch.Tensor | None:
        buffer = tensor.to(self.device, copy=True)  # reduce overwrites its input
        dist.reduce(buffer, group=self.group, group_dst=owner)
        return buffer.to(tensor.device) if self.rank == owner else None


def resolve_group(group: Any) -> dist.ProcessGroup:
    """The process group meant by `group`: a ProcessGroup, or "world" / True for the default one.

    Args:
        group: a torch.distributed ProcessGroup, the string "world" or True.

    Returns:
        The ProcessGroup.

    Raises:
        ConfigError: torch.distributed is not initialised in this process, or `group` is none of these.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("group= was given but torch.distributed is not initialised in this process: launch "
                          "with torchrun and call torch.distributed.init_process_group() first (or run inside "
                          "drcl_fast.runtime.distributed.process_group()), or pass group=None to evaluate in one process")
    if group is True or (isinstance(group, str) and group == "world"):
        return dist.group.WORLD
    if isinstance(group, dist.ProcessGroup):
        return group
    raise ConfigError(f"group must be None (one process), 'world' or True (the default process group) "
                      f"or a torch.distributed ProcessGroup, got {group!r}")


def bounds(total: int, parts: int) -> list[int]:
    """parts + 1 boundaries splitting range(total) into contiguous parts whose sizes differ by at most 1."""
    base, extra = divmod(total, parts)
    return [p * base + min(p, extra) for p in range(parts + 1)]


def shard_slice(total: int, group: Any = "world") -> slice:
    """This rank's contiguous part of `total` items (e.g. its gallery slice for shard_gallery=True).

    The first total % world_size ranks get one item more; rank r's part follows those of ranks < r.

    Args:
        total: the number of items to split (the whole gallery's size).
        group: the process group, as for `sharded_average_precisions`.

    Returns:
        slice(start, stop) of this rank.

    Raises:
        ConfigError: torch.distributed is not initialised, or `group` is not a group.
    """
    exchange = _TorchExchange(resolve_group(group))
    edges = bounds(total, exchange.size)
    return slice(edges[exchange.rank], edges[exchange.rank + 1])


# ---------------------------------------------------------------- what each rank holds, agreed before scoring

@dataclass(frozen=True)
class _Holding:
    """One rank's inputs and settings, compared across ranks before any score is computed."""
    error: tuple[type, str] | None = None
    queries: int = 0
    width: int = 0
    classes: int | None = None  # None: class ids; else the multi-label matrix's columns
    gallery: int = 0
    gallery_dtype: str | None = None  # None: an empty slice
    k: int | None = None
    shard_gallery: bool = False
    max_memory: int | None = None
    summation: str = ""


def _checked(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any, k: int | None,
             shard_gallery: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """reference.check_inputs, allowing an empty gallery slice (returned as None, None) when sharding the gallery."""
    if shard_gallery and len(gallery) == 0:
        q, yq, _, _ = reference.check_inputs(query, query_labels, query, query_labels, k)
        shape = tuple(np.shape(gallery))
        if shape != (0, q.shape[1]) or len(gallery_labels) != 0:
            raise DataError(f"an empty gallery slice must have shape (0, {q.shape[1]}) (the queries' width) "
                            f"and no labels; got shape {shape} and {len(gallery_labels)} labels")
        return q, yq, None, None
    return reference.check_inputs(query, query_labels, gallery, gallery_labels, k)


def _agree(held: list[_Holding]) -> None:
    """Raise the same error on every rank when the ranks' inputs cannot form one evaluation."""
    for r, h in enumerate(held):
        if h.error is not None:
            kind, message = h.error
            raise kind(f"rank {r} of {len(held)}: {message}")
    first = held[0]

    def differ(field: str) -> int | None:
        return next((r for r, h in enumerate(held) if getattr(h, field) != getattr(first, field)), None)

    r = differ("shard_gallery")
    if r is not None:
        raise ConfigError(f"rank {r} passes shard_gallery={held[r].shard_gallery}, rank 0 {first.shard_gallery}; "
                          f"every rank must call with the same shard_gallery")
    r = next((r for r, h in enumerate(held) if (h.queries, h.width) != (first.queries, first.width)), None)
    if r is not None:
        raise DataError(f"rank {r} passes {held[r].queries} queries of width {held[r].width}, rank 0 "
                        f"{first.queries} of width {first.width}; every rank must pass the whole query set")
    r = differ("classes")
    if r is not None:
        def form(h: _Holding) -> str:
            return "class ids" if h.classes is None else f"a 0/1 matrix of {h.classes} labels"
        raise DataError(f"rank {r} passes labels as {form(held[r])}, rank 0 as {form(first)}; "
                        f"every rank must pass labels in the same form")
    for field, meaning in (("k", "k"), ("max_memory", "max_memory"), ("summation", "backend")):
        r = differ(field)
        if r is not None:
            raise ConfigError(f"rank {r} evaluates with {meaning}={getattr(held[r], field)!r}, rank 0 with "
                              f"{getattr(first, field)!r}; pass the same {meaning} on every rank "
                              f"(and install the same build of drcl_fast everywhere)")
    if not first.shard_gallery:
        r = differ("gallery")
        if r is not None:
            raise DataError(f"rank {r} passes a gallery of {held[r].gallery} items, rank 0 of {first.gallery}; "
                            f"without shard_gallery every rank passes the whole gallery (pass "
                            f"shard_gallery=True when each rank holds a slice of it)")
        return
    dtypes = {h.gallery_dtype for h in held} - {None}
    if len(dtypes) > 1:
        raise DataError(f"the ranks' gallery slices have different dtypes ({', '.join(sorted(dtypes))}); "
                        f"pass slices of one array")
    if not dtypes:
        raise DataError(f"every rank's gallery slice is empty (world size {len(held)}); "
                        f"the gallery needs at least one item")


def _summation(backend: str, device: torch.device) -> str:
    """The backend a single process would run here: its name says how it sums each query's precisions."""
    return _SUMMATIONS[dispatch.average_precisions(backend, device)]


# ---------------------------------------------------------------- the entry point

def sharded_average_precisions(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                               k: int | None = None, *, group: Any = "world", shard_gallery: bool = False,
                               backend: str = "auto", max_memory: int | None = None) -> torch.Tensor:
    """Per-query AP (float64) of cosine retrieval, computed by every rank of `group` together.

    Every rank must call this with the same settings. It returns, on every rank, the very
    tensor a single process's backend returns for the whole query and gallery sets, so
    `evaluate_map(..., group=...)` takes the same mean over the same floats in the same
    order (a reduction of per-rank partial sums would not give the same float).

    Queries sharded (default): every rank passes the whole arrays; each ranks a contiguous
    slice of the queries with the backend and the APs are all-gathered (8 bytes a query).
    Gallery sharded (`shard_gallery=True`): `gallery` and `gallery_labels` are this
    rank's contiguous slice (rank r's follows those of ranks < r; any sizes, an empty
    slice as a (0, D) array and no labels); the queries are the whole set on every rank.

    Args:
        query, query_labels, gallery, gallery_labels: as for `evaluate_map`.
        k: MAP@k cutoff; None for MAP@all. A k beyond the whole gallery walks all of it, as in one process.
        group: a torch.distributed ProcessGroup, or "world" / True for the default group.
        shard_gallery: each rank holds only its slice of the gallery.
        backend: as for `evaluate_map`; the result equals that backend's single-process one.
        max_memory: bytes for one query chunk's working set (None: the backend's default).

    Returns:
        (Q,) float64 APs on the queries' device, NaN for multi-label queries left out.

    Raises:
        ConfigError: torch.distributed is not initialised, or the ranks' settings differ.
        DataError: a rank's inputs are invalid, or the ranks' inputs do not fit together
            (query count or width, label form; gallery size without shard_gallery).
        BackendError: the backend is not available.
    """
    return _average_precisions(_TorchExchange(resolve_group(group)), query, query_labels, gallery,
                               gallery_labels, k, shard_gallery, backend, max_memory)


def _average_precisions(exchange: Exchange, query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                        k: int | None, shard_gallery: bool, backend: str, max_memory: int | None) -> torch.Tensor:
    """sharded_average_precisions over any Exchange (the tests run ranks as threads)."""
    try:
        q, yq, g, yg = _checked(query, query_labels, gallery, gallery_labels, k, shard_gallery)
        held = _Holding(queries=q.shape[0], width=q.shape[1], classes=yq.shape[1] if yq.dim() == 2 else None,
                        gallery=0 if g is None else g.shape[0],
                        gallery_dtype=None if g is None else str(g.dtype).removeprefix("torch."), k=k,
                        shard_gallery=shard_gallery,
                        max_memory=max_memory, summation=_summation(backend, q.device))
    except DRCLError as error:  # raised on every rank below, so that none waits for the others
        held = _Holding(error=(type(error), str(error)))
    everyone = exchange.objects(held)
    _agree(everyone)
    if not shard_gallery:
        return _queries_sharded(exchange, q, yq, g, yg, k, backend, held.summation, max_memory)
    if g is None:  # an empty slice, typed as the others are
        dtype = getattr(torch, next(h.gallery_dtype for h in everyone if h.gallery_dtype))
        g, yg = q.new_empty(0, q.shape[1], dtype=dtype), yq.new_empty((0, *yq.shape[1:]))
    return _gallery_sharded(exchange, q, yq, g, yg, k, [h.gallery for h in everyone], held.summation,
                            max_memory)


def backend_chunk(summation: str, num_queries: int, total: int, dtype: torch.dtype,
                  max_memory: int | None) -> int:
    """Queries per chunk of that backend in one process: the row chunks its scores are computed in.

    Sharded scores are computed in the same row chunks: float64 products differ in the last
    bit with the chunking (rows in a trailing partial block of the BLAS kernel), and the
    reference sums a one-query chunk of a long row across threads, unlike other chunks.
    """
    if summation == "cpp":
        budget, per_pair = reference.DEFAULT_MAX_MEMORY, cpp._BYTES_PER_SCORE_PAIR[dtype]
    elif summation == "triton":  # its sort path; the fused top-k computes scores of its own
        budget, per_pair = triton_backend.DEFAULT_MAX_MEMORY, triton_backend._SORT_BYTES_PER_PAIR
    else:
        budget, per_pair = reference.DEFAULT_MAX_MEMORY, reference._BYTES_PER_PAIR
    return reference.auto_chunk_size(num_queries, total, max_memory or budget, per_pair)


def _queries_sharded(exchange: Exchange, q: torch.Tensor, yq: torch.Tensor, g: torch.Tensor, yg: torch.Tensor,
                     k: int | None, backend: str, summation: str, max_memory: int | None) -> torch.Tensor:
    impl = dispatch.average_precisions(backend, q.device)
    num_queries = q.shape[0]
    dtype = torch.promote_types(q.dtype, g.dtype)
    # Slices of whole one-process chunks where the chunking could change a float (backend_chunk);
    # float32 scores and the other backends' sums do not depend on it, so those slices are even.
    unit = (backend_chunk(summation, num_queries, g.shape[0], dtype, max_memory)
            if dtype == torch.float64 or summation == "torch" else 1)
    edges = [min(num_queries, unit * e) for e in bounds(-(-num_queries // unit), exchange.size)]
    start, stop = edges[exchange.rank], edges[exchange.rank + 1]
    mine = (impl(q[start:stop], yq[start:stop], g, yg, k=k, **dispatch.memory_budget(max_memory))
            if stop > start else q.new_empty(0, dtype=torch.float64))
    return torch.cat(exchange.gather(mine, [b - a for a, b in zip(edges, edges[1:])]))


# ---------------------------------------------------------------- gallery sharded: scores

def score_window(offset: int, size: int, total: int) -> tuple[int, int]:
    """[start, stop) of the whole gallery's columns in which a slice [offset, offset + size) is scored.

    The scores of the slice's items are then the bits the whole gallery's product gives them
    (see SCORE_ALIGN; checked by tests/retrieval/test_sharded_map.py on this machine's BLAS).
    """
    start = offset // SCORE_ALIGN * SCORE_ALIGN
    stop = min(total, -(-(offset + size) // SCORE_ALIGN) * SCORE_ALIGN)
    if stop - start < SCORE_ALIGN and start > 0:
        start -= SCORE_ALIGN
    return start, stop


class SliceScorer:
    """Cosine scores of query chunks against one gallery slice, bit for bit those of the whole gallery."""

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor, offset: int, total: int):
        """query: the checked (Q, D) queries; gallery: the checked slice; offset: its first global index."""
        start, stop = score_window(offset, gallery.shape[0], total)
        window = gallery.new_zeros(stop - start, gallery.shape[1])
        self.lo, self.hi = offset - start, offset - start + gallery.shape[0]
        window[self.lo:self.hi] = gallery
        # Normalising is per row, and zero rows stay zero: the slice's unit rows are the whole gallery's.
        self.query, self.window = reference.unit_rows(query, window)

    def scores(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, slice size) scores of queries start:stop."""
        return reference.chunk_scores(self.query[start:stop], self.window)[:, self.lo:self.hi]


# ---------------------------------------------------------------- gallery sharded: the tie rule as keys
# With float32 scores every item gets one int64 key: the score's bits mapped to an integer that
# ascends as the score descends, then 2 * global index + relevance. Keys are distinct and ascend
# exactly in the tie rule's order (higher score, then lower index), so that ranking, selecting
# and counting are plain integer sorts and searches, and the relevance bit rides along.

def keyed(dtype: torch.dtype, total: int) -> bool:
    """Whether the gallery's items get keys: float32 scores and at most 2**31 items. The others
    (float64) are ranked with a stable sort instead, several times slower on a CPU."""
    return dtype == torch.float32 and total <= 2**31


def tie_keys(score_key: Any, index2: Any) -> Any:
    """Keys of items without their relevance bit: score keys (int64, overwritten) and 2 * global index.
    numpy arrays or tensors alike."""
    score_key <<= 32
    score_key += index2
    return score_key


def item_keys(scores: torch.Tensor, relevant: torch.Tensor, offset: int) -> torch.Tensor:
    """(c, n) int64 keys of a slice's items whose first global index is `offset`."""
    folded = scores + 0.0  # -0.0 + 0.0 is 0.0: the two compare equal, so they must share a key
    # The same integer operations on numpy views for CPU tensors: numpy's kernels are several times faster there.
    cpu = folded.device.type == "cpu"
    bits = folded.numpy().view(np.int32) if cpu else folded.view(torch.int32)
    bits ^= (bits >> 31) & 0x7FFFFFFF  # a signed integer in the floats' order
    bits ^= -1  # ... and in the reverse order: higher scores first
    index = np.arange(offset, offset + scores.shape[1]) if cpu else torch.arange(offset, offset + scores.shape[1],
                                                                                 device=scores.device)
    keys = tie_keys(bits.astype(np.int64) if cpu else bits.long(), 2 * index)
    keys += relevant.numpy() if cpu else relevant
    return torch.as_tensor(keys)


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of `x` sorted ascending, in place on a CPU (values only: no order of equal items is kept)."""
    if x.device.type == "cpu":  # numpy's vectorised sort is many times faster than torch.sort (docs/history.md)
        x.numpy().sort(axis=1)
        return x
    return torch.sort(x, dim=1).values


def count_less(ascending: torch.Tensor, needles: torch.Tensor) -> torch.Tensor:
    """(c, M) int64: per row, how many entries of `ascending` (c, n) are < each needle."""
    if ascending.device.type != "cpu":
        return torch.searchsorted(ascending, needles)
    # Row by row: numpy's search resumes from the last needle's place when needles ascend,
    # as they do here in runs (one run per slice).
    return torch.from_numpy(np.stack([np.searchsorted(row, wanted) for row, wanted in
                                      zip(ascending.numpy(), needles.numpy())]).reshape(needles.shape))


# ---------------------------------------------------------------- gallery sharded: MAP@k

def local_top(scores: torch.Tensor, relevant: torch.Tensor, top: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A slice's best min(top, n) items per query: their scores, and keys 2 * global index + relevance.

    Args:
        scores: (c, n) scores of a query chunk against the slice.
        relevant: (c, n) bool relevance.
        top: items wanted per query.
        offset: the slice's first global gallery index.

    Returns:
        (c, min(top, n)) scores and int64 keys, best first under the tie rule.
    """
    top = min(top, scores.shape[1])
    if keyed(scores.dtype, offset + scores.shape[1]):  # distinct keys: a selection is exact
        best = torch.topk(item_keys(scores, relevant, offset), top, dim=1, largest=False, sorted=True).values
        code = best & (2**32 - 1)  # 2 * global index + relevance
        return scores.gather(1, code // 2 - offset), code
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]
    return scores.gather(1, order), (order + offset) * 2 + relevant.gather(1, order)


def merge_top(values: list[torch.Tensor], keys: list[torch.Tensor], top: int) -> torch.Tensor:
    """(c, top) bool relevance of each query's first `top` items among all slices' candidates.

    Ranked by score, highest first, then by global gallery index, lowest first: the tie
    rule of one process, whatever order the candidates come in.
    """
    value, key = torch.cat(values, 1), torch.cat(keys, 1)
    by_index = key.argsort(1)  # keys are distinct: 2 * index + relevance
    value, key = value.gather(1, by_index), key.gather(1, by_index)
    best = torch.sort(value, dim=1, descending=True, stable=True).indices[:, :top]
    return (key.gather(1, best) & 1).bool()


# ---------------------------------------------------------------- gallery sharded: MAP@all

def place(flats: list[torch.Tensor], found: torch.Tensor, fill: float | int) -> torch.Tensor:
    """Per-slice flat lists of relevant items -> one (c, M) row per query: slice 0's items, then slice 1's, ...

    Args:
        flats: slice t's values, query by query (found[t, i] for query i).
        found: (W, c) relevant counts per slice and query.
        fill: the value of the padding after each row's R_i = found[:, i].sum() items.
    """
    width = int(found.sum(0).max()) if found.numel() else 0
    out = torch.full((found.shape[1], width), fill, dtype=flats[0].dtype, device=found.device)
    first = found.cumsum(0) - found  # column where slice t's items of query i begin
    rows = torch.arange(found.shape[1], device=found.device)
    for t, flat in enumerate(flats):
        row = rows.repeat_interleave(found[t])
        starts = (found[t].cumsum(0) - found[t]).repeat_interleave(found[t])  # where query i's run begins in flat
        within = torch.arange(len(flat), device=found.device) - starts
        out[row, first[t, row] + within] = flat.to(out.device)
    return out


class KeyedSlice:
    """One slice's items for a query chunk as sorted keys (float32 scores; see `item_keys`).

    An item ranks before another exactly when its key is smaller, so one search counts the
    items of this slice before any item. An item of another slice needs no index of its
    own: every index of its slice compares with this slice's as its slice's first index
    does (slices are contiguous), so it travels as its score key only.
    """

    def __init__(self, scores: torch.Tensor, relevant: torch.Tensor, offset: int):
        self.sorted = sort_rows(item_keys(scores, relevant, offset))
        keys = self.sorted.numpy() if self.sorted.device.type == "cpu" else self.sorted  # as in item_keys
        hit = (keys & 1) == 1
        self.found, self.own = torch.as_tensor(hit.sum(1)), torch.as_tensor(keys[hit])  # query by query, in rank order
        self.outgoing = (self.own >> 32).int()  # 4 bytes an item: the score key

    def count_before(self, parts: list[torch.Tensor], found: torch.Tensor, shard: int,
                     offsets: list[int]) -> torch.Tensor:
        """(c, M) this slice's items ranked before each relevant item of every slice (`place` layout)."""
        needles = [self.own if t == shard else tie_keys(part.long(), 2 * offsets[t]) for t, part in enumerate(parts)]
        return count_less(self.sorted, place(needles, found, 0))


class SortedSlice:
    """One slice's items for a query chunk by a stable sort (float64 scores; as KeyedSlice, slower)."""

    def __init__(self, scores: torch.Tensor, relevant: torch.Tensor, offset: int):
        values, order = torch.sort(scores, dim=1, descending=True, stable=True)
        hit = relevant.gather(1, order)
        rows, ranks = hit.nonzero(as_tuple=True)  # query by query, in rank order
        self.ascending = -values  # searchsorted wants ascending rows
        self.found, self.outgoing, self.own_ranks = hit.sum(1), values[rows, ranks], ranks

    def count_before(self, parts: list[torch.Tensor], found: torch.Tensor, shard: int,
                     offsets: list[int]) -> torch.Tensor:
        """As KeyedSlice.count_before. An item of an earlier slice has a lower index than all of this
        slice, so equal scores here come after it; equal scores here come before a later slice's item."""
        x = -place(parts, found, 0.0)
        source = place([torch.full((len(part),), t, device=x.device) for t, part in enumerate(parts)], found, -1)
        own = place([self.own_ranks if t == shard else torch.zeros(len(part), dtype=torch.long, device=x.device)
                     for t, part in enumerate(parts)], found, 0)
        if self.ascending.shape[1] == 0:
            return torch.zeros_like(own)
        higher = torch.searchsorted(self.ascending, x, side="left")      # scores > s
        not_lower = torch.searchsorted(self.ascending, x, side="right")  # scores >= s
        return torch.where(source == shard, own, torch.where(source < shard, higher, not_lower))


# ---------------------------------------------------------------- AP, summed as the backend sums it

def ap_from_ranks(ranks: torch.Tensor, found: torch.Tensor, width: int, skip_empty: bool,
                  summation: str) -> torch.Tensor:
    """Per-query AP (float64) from the ranks of the relevant items walked, summed as `summation` sums.

    Args:
        ranks: (c, M) int64, each row's found[i] 1-based ranks first, ascending (the rest is ignored).
        found: (c,) int64 relevant items walked per query.
        width: the ranks walked (min(k, N), or N for MAP@all).
        skip_empty: NaN (not 0) for a query with nothing relevant walked (multi-label).
        summation: "torch" (reference.ap_from_hits over the (c, width) hits), "cpp" (a running
            sum in rank order, as csrc/rank.h) or "triton" (its walk kernel over the hits).
    """
    c, m = ranks.shape
    valid = torch.arange(m, device=ranks.device) < found[:, None]
    if summation == "cpp":
        # rank.h adds each hit's precision to a float64 running sum in rank order; a CPU
        # cumulative sum adds the same terms in the same order (zeros after the last hit).
        ordinal = torch.arange(1, m + 1, dtype=torch.float64, device=ranks.device)
        terms = torch.where(valid, ordinal / ranks.double(), 0.0).cpu()
        total = terms.cumsum(1)[:, -1] if m else terms.new_zeros(c)
        ap = total / found.cpu().clamp(min=1).double()
        if skip_empty:
            ap[found.cpu() == 0] = float("nan")
        return ap.to(ranks.device)
    hit = torch.zeros(c, width, dtype=torch.bool, device=ranks.device)
    rows = torch.arange(c, device=ranks.device)[:, None].expand(c, m)
    hit[rows[valid], ranks[valid] - 1] = True
    if summation == "torch":
        return reference.ap_from_hits(hit, skip_empty)
    from drcl_fast.kernels import map_ranked
    # The walk reads relevance through labels: gallery "item" 0 is relevant to every query, item 1 is not.
    codes = torch.tensor([0, 1], device=ranks.device)
    return map_ranked.average_precisions((~hit).long(), codes.new_zeros(c), codes, skip_empty)


def _gallery_sharded(exchange: Exchange, q: torch.Tensor, yq: torch.Tensor, g: torch.Tensor, yg: torch.Tensor,
                     k: int | None, sizes: list[int], summation: str, max_memory: int | None) -> torch.Tensor:
    total, shard = sum(sizes), exchange.rank
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    top = total if k is None else min(k, total)
    skip_empty = yq.dim() == 2
    num_queries, dtype = q.shape[0], torch.promote_types(q.dtype, g.dtype)
    scorer = SliceScorer(q, g, offsets[shard], total) if g.shape[0] else None
    # Ranked in pieces that keep the working set within max_memory; scored in the backend's own
    # row chunks where the chunking could change a float (backend_chunk), else piece by piece.
    piece = reference.auto_chunk_size(num_queries, total, max_memory or reference.DEFAULT_MAX_MEMORY)
    step = (backend_chunk(summation, num_queries, total, dtype, max_memory)
            if dtype == torch.float64 or summation == "torch" else piece)
    piece = min(piece, step)
    owned: list[torch.Tensor] = []
    pieces: list[int] = []
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        scores = (scorer.scores(start, stop) if scorer is not None
                  else q.new_empty(stop - start, 0, dtype=dtype))
        for first in range(start, stop, piece):
            last = min(first + piece, stop)
            owner = len(pieces) % exchange.size
            pieces.append(last - first)
            part = scores[first - start:last - start]
            relevant = reference.relevance(yq[first:last], yg)
            if k is None:
                ranks, found = _piece_ranks_all(exchange, part, relevant, offsets, total, owner)
            else:
                ranks, found = _piece_ranks_top(exchange, part, relevant, top, offsets, sizes, owner)
            if ranks is not None:
                owned.append(ap_from_ranks(ranks, found, top, skip_empty, summation))
        del scores
    return _assemble(exchange, owned, pieces, q.device)


def _piece_ranks_top(exchange: Exchange, scores: torch.Tensor, relevant: torch.Tensor, top: int, offsets: list[int],
                     sizes: list[int], owner: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """MAP@k: every slice's candidates to the piece's owner, merged there into ranks of the hits."""
    c = scores.shape[0]
    values, keys = local_top(scores, relevant, top, offsets[exchange.rank])
    widths = [min(top, n) for n in sizes]
    all_values = exchange.gather(values.reshape(-1), [c * w for w in widths])
    all_keys = exchange.gather(keys.reshape(-1), [c * w for w in widths])
    if exchange.rank != owner:
        return None, None
    hit = merge_top([v.view(c, w) for v, w in zip(all_values, widths)],
                    [key.view(c, w) for key, w in zip(all_keys, widths)], top)
    positions = torch.arange(1, top + 1, device=hit.device)
    return sort_rows(torch.where(hit, positions, top + 1)), hit.sum(1)


def _piece_ranks_all(exchange: Exchange, scores: torch.Tensor, relevant: torch.Tensor, offsets: list[int],
                     total: int, owner: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """MAP@all: the global rank of every relevant item, counted over all slices, on the piece's owner."""
    shard = exchange.rank
    # One kind on every rank: what they send must have one dtype.
    mine = (KeyedSlice if keyed(scores.dtype, total) else SortedSlice)(scores, relevant, offsets[shard])
    found = torch.stack(exchange.gather(mine.found, [mine.found.numel()] * exchange.size))
    parts = exchange.gather(mine.outgoing, [int(n) for n in found.sum(1)])
    valid = torch.arange(int(found.sum(0).max()) if found.numel() else 0, device=found.device) < found.sum(0)[:, None]
    before = mine.count_before(parts, found, shard, offsets)[valid]
    # Counts are exact integers: their sum does not depend on the order of the reduction.
    count_dtype = torch.int32 if total < 2**31 else torch.int64
    summed = (exchange.reduce_sum(before.to(count_dtype), owner) if before.numel()
              else (before if shard == owner else None))
    if summed is None:
        return None, None
    ranks = torch.full(valid.shape, total + 1, dtype=torch.long, device=found.device)
    ranks[valid] = summed.long() + 1
    return sort_rows(ranks), found.sum(0)


def _assemble(exchange: Exchange, owned: list[torch.Tensor], pieces: list[int], device: torch.device) -> torch.Tensor:
    """The pieces' APs, each computed by its owner (piece j: rank j % W), to every rank in query order."""
    size = exchange.size
    sizes = [sum(pieces[r::size]) for r in range(size)]
    mine = torch.cat(owned).to(device) if owned else torch.empty(0, dtype=torch.float64, device=device)
    parts = [part.split(pieces[r::size]) for r, part in enumerate(exchange.gather(mine, sizes))]
    return torch.cat([parts[j % size][j // size] for j in range(len(pieces))])
