"""Fused similarity product and running top-k for MAP@k and top-k search: the (Q, N) scores never exist.

Each program owns BLOCK_Q queries and one slice of the gallery. It computes the
scores of KP gallery items at a time (float32 `tl.dot` at IEEE precision, no
TF32) and merges them into a running top-KP list per query. An item is packed
into one int64 key, (order-preserving score bits << 32) | (2**32 - 1 - index),
so a larger key always ranks first: higher score, then lower gallery index,
the tie rule of the reference. The slices' lists are merged on the host with
one torch.topk over the keys, which are unique, so the merge is exact. The keys
hold the scores' bits, so the search (`topk`) reads its scores back from them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from drcl_fast.kernels import probe_inputs
from drcl_fast.kernels.boundary import Args
from drcl_fast.runtime import selfcheck

_EMPTY = tl.constexpr(-2**63)  # below every real key
_LOW = tl.constexpr(2**32 - 1)
LARGEST_K = 128  # register budget of the merge; larger k takes the sort path
_BLOCK_Q = 16
_BLOCK_D = 32


@triton.jit
def _rank_keys(scores, cols):
    # -0.0 and 0.0 are the same score; fold them before reading the bits.
    scores = tl.where(scores == 0.0, 0.0, scores)
    bits = scores.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed-int order == float order
    return (ordered.to(tl.int64) << 32) + (_LOW - cols.to(tl.int64))


@triton.jit
def _keep_top(best, keys, BLOCK_Q: tl.constexpr, KP: tl.constexpr):
    both = tl.sort(tl.reshape(tl.join(best, keys), [BLOCK_Q, 2 * KP]), dim=1, descending=True)
    top, _ = tl.split(tl.permute(tl.reshape(both, [BLOCK_Q, 2, KP]), [0, 2, 1]))
    return top


@triton.jit
def _topk_kernel(q_ptr, g_ptr, out_ptr, num_q, num_g, dim, per_split,
                 stride_q, stride_g, stride_split, stride_row,
                 KP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_q
    begin = tl.program_id(1) * per_split
    end = tl.minimum(begin + per_split, num_g)
    best = tl.full([BLOCK_Q, KP], _EMPTY, tl.int64)
    for start in range(begin, end, KP):
        cols = start + tl.arange(0, KP)
        col_ok = cols < end
        scores = tl.zeros([BLOCK_Q, KP], tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            a = tl.load(q_ptr + rows.to(tl.int64)[:, None] * stride_q + d[None, :],
                        mask=row_ok[:, None] & (d[None, :] < dim), other=0.0)
            b = tl.load(g_ptr + cols.to(tl.int64)[:, None] * stride_g + d[None, :],
                        mask=col_ok[:, None] & (d[None, :] < dim), other=0.0)
            scores = tl.dot(a, tl.trans(b), scores, input_precision="ieee")
        keys = tl.where(col_ok[None, :], _rank_keys(scores, cols[None, :]), _EMPTY)
        # Most tiles hold nothing better than the current k-th item: skip their merge.
        threshold = tl.min(best, axis=1)
        if tl.max(tl.max((keys > threshold[:, None]).to(tl.int32), axis=1), axis=0) > 0:
            best = _keep_top(best, keys, BLOCK_Q, KP)
    out = out_ptr + tl.program_id(1) * stride_split + rows[:, None] * stride_row + tl.arange(0, KP)[None, :]
    tl.store(out, best, mask=row_ok[:, None])


def _splits(num_q: int, num_g: int, kp: int, device: torch.device) -> int:
    """Gallery slices per query block: enough programs to fill the GPU, each with a few tiles."""
    blocks = triton.cdiv(num_q, _BLOCK_Q)
    if device.type == "cuda":
        target, tiles = 4 * torch.cuda.get_device_properties(device).multi_processor_count, 8
    else:
        # The interpreter: a tl.sort costs a fraction of a second there, so keep one
        # tile per slice, and still several slices so that tests exercise the merge.
        target, tiles = 4, 1
    return max(1, min(triton.cdiv(target, blocks), triton.cdiv(num_g, tiles * kp)))


def _best_keys(launcher: str, query: torch.Tensor, gallery: torch.Tensor, top: int) -> torch.Tensor:
    """(Q, top) int64 packed keys of each query's `top` best items, best first; errors name `launcher`."""
    args = Args(launcher)
    args.tensor("query", query, "Q D", (torch.float32,))
    args.tensor("gallery", gallery, "N D", "query")
    num_q, dim = query.shape
    num_g = gallery.shape[0]
    if not 1 <= top <= min(LARGEST_K, num_g):
        raise args.fail(f"top must be between 1 and min({LARGEST_K}, gallery size {num_g}), got {top}")
    query, gallery = query.contiguous(), gallery.contiguous()
    kp = max(16, triton.next_power_of_2(top))
    splits = _splits(num_q, num_g, kp, query.device)
    per_split = triton.cdiv(triton.cdiv(num_g, splits), kp) * kp
    splits = triton.cdiv(num_g, per_split)
    keys = torch.empty(splits, num_q, kp, dtype=torch.int64, device=query.device)
    grid = (triton.cdiv(num_q, _BLOCK_Q), splits)
    _topk_kernel[grid](query, gallery, keys, num_q, num_g, dim, per_split,
                       query.stride(0), gallery.stride(0), keys.stride(0), keys.stride(1),
                       KP=kp, BLOCK_Q=_BLOCK_Q, BLOCK_D=_BLOCK_D)
    return torch.topk(keys.permute(1, 0, 2).reshape(num_q, splits * kp), top, dim=1, sorted=True).values


def _indices_of(keys: torch.Tensor) -> torch.Tensor:
    return (2**32 - 1) - (keys & (2**32 - 1))


def _scores_of(keys: torch.Tensor) -> torch.Tensor:
    """The float32 scores packed in the keys' high words (_rank_keys, undone: the map is its own inverse)."""
    ordered = keys >> 32
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.to(torch.int32).view(torch.float32)


def topk_indices(query: torch.Tensor, gallery: torch.Tensor, top: int) -> torch.Tensor:
    """(Q, top) int64 gallery indices of each query's `top` best items, best first.

    `query` and `gallery` are float32 unit rows on one device; 1 <= top <= min(LARGEST_K, N).
    """
    return _indices_of(_best_keys("topk_indices", query, gallery, top))


def topk(query: torch.Tensor, gallery: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices), each (Q, top), of each query's `top` best items, best first: the kernel's
    float32 scores (a -0.0 comes back as 0.0, its equal) and int64 gallery indices.

    `query` and `gallery` are float32 unit rows on one device; 1 <= top <= min(LARGEST_K, N).
    """
    keys = _best_keys("topk", query, gallery, top)
    return _scores_of(keys), _indices_of(keys)


# ---------------------------------------------------------------- the self-check probe (drcl_fast.runtime.selfcheck)

def _probe_topk(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """The "topk" probe: the Triton search against the reference's, scores and indices exactly."""
    # Imported here: drcl_fast.retrieval.nearest imports this module on first use.
    from drcl_fast.retrieval.nearest import search_backends
    found = search_backends()
    g = torch.Generator().manual_seed(204)
    q, gallery = probe_inputs.exact_rows(g, 3).to(device), probe_inputs.exact_rows(g, 21).to(device)
    # k = 5: the fused kernel over two gallery slices; its keys carry the scores, compared too.
    fast, ref = found["triton"](q, gallery, 5), found["torch"](q, gallery, 5)
    return {"scores": fast[0], "indices": fast[1]}, {"scores": ref[0], "indices": ref[1]}, 0.0


selfcheck.register("topk", _probe_topk)
