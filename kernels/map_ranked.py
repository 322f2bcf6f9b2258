"""Walks ranked gallery indices once per query: AP, or relevant counts at rank cutoffs.

Relevance is looked up on the fly from compact labels (class codes, or bitmasks
of 64 labels per int64 word: shared label = non-zero AND), so no (Q, N)
relevance matrix is built. One program per query; a block of ranks at a time,
with the running count of relevant items carried between blocks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from drcl_fast.kernels import probe_inputs
from drcl_fast.kernels.boundary import INDICES, ROWS, Args
from drcl_fast.runtime import selfcheck

_BLOCK = 1024


@triton.jit
def _relevant(qi, idx, ok, query_ptr, gallery_ptr, WORDS: tl.constexpr, MULTILABEL: tl.constexpr):
    if MULTILABEL:
        shared = tl.zeros_like(idx)
        for w in tl.static_range(WORDS):
            shared |= tl.load(gallery_ptr + idx * WORDS + w, mask=ok, other=0) & tl.load(query_ptr + qi * WORDS + w)
        return ok & (shared != 0)
    else:
        return ok & (tl.load(gallery_ptr + idx, mask=ok, other=-1) == tl.load(query_ptr + qi))


@triton.jit
def _walk_kernel(order_ptr, stride_order, query_ptr, gallery_ptr, slot_ptr, out_ptr, top, num_cutoffs,
                 HITS: tl.constexpr, SKIP_EMPTY: tl.constexpr, WORDS: tl.constexpr,
                 MULTILABEL: tl.constexpr, BLOCK: tl.constexpr):
    qi = tl.program_id(0)
    found = tl.sum(tl.zeros([BLOCK], tl.int32), axis=0)
    precision_sum = tl.zeros([BLOCK], tl.float64)
    for start in range(0, top, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        ok = pos < top
        idx = tl.load(order_ptr + qi.to(tl.int64) * stride_order + pos, mask=ok, other=0)
        rel = _relevant(qi, idx, ok, query_ptr, gallery_ptr, WORDS, MULTILABEL)
        hits = tl.cumsum(rel.to(tl.int32), axis=0) + found
        if HITS:
            # slot[r] is j where rank r + 1 is cutoffs[j], else -1.
            slot = tl.load(slot_ptr + pos, mask=ok, other=-1)
            tl.store(out_ptr + qi * num_cutoffs + slot, hits.to(tl.int64), mask=slot >= 0)
        else:
            precision_sum += tl.where(rel, hits.to(tl.float64) / (pos + 1).to(tl.float64), 0.0)
        found += tl.sum(rel.to(tl.int32), axis=0)
    if not HITS:
        ap = tl.sum(precision_sum, axis=0) / tl.maximum(found, 1).to(tl.float64)
        if SKIP_EMPTY:
            ap = tl.where(found == 0, float("nan"), ap)
        tl.store(out_ptr + qi, ap)


def _check_walk(launcher: str, order: torch.Tensor, query_labels: torch.Tensor,
                gallery_labels: torch.Tensor) -> Args:
    """order (Q x top) int64 with unit stride along its rows (the kernel takes its row stride only); labels
    int64, class codes (Q), (N) or bitmasks (Q x W), (N x W); one device."""
    args = Args(launcher)
    args.tensor("order", order, "Q top", (torch.int64,), layout=ROWS)
    args.tensor("query_labels", query_labels, ("Q", "Q W"), (torch.int64,))
    args.tensor("gallery_labels", gallery_labels, "N W" if query_labels.dim() == 2 else "N", "query_labels")
    return args


def _walk(order: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor,
          out: torch.Tensor, slots: torch.Tensor | None, skip_empty: bool) -> torch.Tensor:
    multilabel = query_labels.dim() == 2
    words = query_labels.shape[1] if multilabel else 1
    top = order.shape[1]
    _walk_kernel[(order.shape[0],)](
        order, order.stride(0), query_labels.contiguous(), gallery_labels.contiguous(),
        out if slots is None else slots, out, top, 1 if slots is None else out.shape[1],
        HITS=slots is not None, SKIP_EMPTY=skip_empty, WORDS=words, MULTILABEL=multilabel,
        BLOCK=min(_BLOCK, max(16, triton.next_power_of_2(top))))
    return out


def average_precisions(order: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor,
                       skip_empty: bool) -> torch.Tensor:
    """(Q,) float64 AP over the ranked (Q, top) int64 gallery indices `order`.

    Labels: int64 class codes (Q,), (N,) or int64 bitmasks (Q, W), (N, W). A query
    with nothing relevant in the walk gets NaN if `skip_empty`, else 0."""
    _check_walk("average_precisions", order, query_labels, gallery_labels)
    out = torch.empty(order.shape[0], dtype=torch.float64, device=order.device)
    return _walk(order, query_labels, gallery_labels, out, None, skip_empty)


def hits_at(order: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor,
            cutoffs: torch.Tensor) -> torch.Tensor:
    """(Q, len(cutoffs)) int64 relevant items among the first cutoffs[j] of `order`
    (cutoffs strictly increasing, the last one equal to order.shape[1]; on any device)."""
    args = _check_walk("hits_at", order, query_labels, gallery_labels)
    args.tensor("cutoffs", cutoffs, "cutoffs", INDICES, same_device=False)
    slots = torch.full((order.shape[1],), -1, dtype=torch.int32, device=order.device)
    slots[cutoffs.to(order.device) - 1] = torch.arange(len(cutoffs), dtype=torch.int32, device=order.device)
    out = torch.empty(order.shape[0], len(cutoffs), dtype=torch.int64, device=order.device)
    return _walk(order, query_labels, gallery_labels, out, slots, skip_empty=False)


# ---------------------------------------------------------------- the self-check probes (drcl_fast.runtime.selfcheck)
# The retrieval backend and its reference are imported inside the probes: drcl_fast.retrieval.triton
# imports this module on first use, and the probes run only once Triton is wanted anyway.

def _probe_average_precisions(device: torch.device) -> tuple[dict, dict, float]:
    """The "evaluate_map" probe: the Triton backend's per-query APs against the reference's, exactly."""
    from drcl_fast.retrieval import reference
    from drcl_fast.retrieval import triton as triton_backend
    fast, ref = {}, {}
    # MAP@all: the sort path; MAP@3: the fused top-k kernel; single- and multi-label walks.
    for name, k, multilabel, seed in (("AP@all", None, False, 201), ("AP@3, multi-label", 3, True, 202)):
        args = probe_inputs.ranking_case(device, seed, 3, 7, multilabel)
        fast[name] = triton_backend.average_precisions(*args, k=k)
        ref[name] = reference.average_precisions(*args, k=k)
    return fast, ref, 1e-12


def _probe_hits_at(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The "precision_recall" probe: the Triton backend's relevant counts at cutoffs against the reference's."""
    from drcl_fast.retrieval import reference
    from drcl_fast.retrieval import triton as triton_backend
    args = probe_inputs.ranking_case(device, 203, 3, 7, False)
    return triton_backend.hits_at(*args, [1, 4, 7]), reference.hits_at(*args, [1, 4, 7]), 0.0


selfcheck.register("evaluate_map", _probe_average_precisions)
selfcheck.register("precision_recall", _probe_hits_at)
