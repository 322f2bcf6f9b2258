"""Which implementation ranks: the reference, the C++ extension or the Triton kernels.

Every evaluator takes (query, query_labels, gallery, gallery_labels, ...,
max_memory=), every top-k search (queries, gallery, k, max_memory=) on checked
tensors, and each returns the reference's result exactly; a backend that is not
usable in this process is registered as None, so "auto" falls back and says so once.
The Triton functions are handed out only after their probes below pass
(``drcl_fast.runtime.selfcheck``): tiny rankings compared exactly with the reference's.
"""
from __future__ import annotations

from typing import Callable

import torch

from drcl_fast.retrieval import cpp, reference
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.runtime import selfcheck
from drcl_fast.runtime.backends import choose


def _impls(name: str) -> dict[str, Callable | None]:
    return {"torch": getattr(reference, name),
            "cpp": getattr(cpp, name) if cpp.AVAILABLE else None,
            "triton": getattr(triton_backend, name) if triton_backend.AVAILABLE else None}


def average_precisions(backend: str, device: torch.device) -> Callable:
    """Per-query AP: f(query, query_labels, gallery, gallery_labels, k=, [max_memory=])."""
    return choose("evaluate_map", backend, device, _impls("average_precisions"))


def hits_at(backend: str, device: torch.device) -> Callable:
    """Relevant items above rank cutoffs: f(query, query_labels, gallery, gallery_labels, cutoffs, [max_memory=])."""
    return choose("precision_recall", backend, device, _impls("hits_at"))


def topk(backend: str, device: torch.device) -> Callable:
    """Exact top-k search: f(q, g, k, [max_memory=]) on checked tensors -> (scores, indices)."""
    return choose("topk", backend, device, _search_impls())


def _search_impls() -> dict[str, Callable | None]:
    # Imported here: nearest.py looks its backends up through this module.
    from drcl_fast.retrieval.nearest import search_backends
    return search_backends()


def memory_budget(max_memory: int | None) -> dict[str, int]:
    """The max_memory= keyword for an implementation; none for None, so that each keeps its own default."""
    return {} if max_memory is None else {"max_memory": max_memory}


# ---------------------------------------------------------------- the Triton functions' self-check probes
# Rows of +-1 entries times a power of two: unit rows of +-1/2, so every cosine is a multiple
# of 1/4 in any precision and the rankings are exact, ties (broken by index) included.

def _exact_rows(generator: torch.Generator, rows: int, dim: int = 4) -> torch.Tensor:
    signs = torch.randint(0, 2, (rows, dim), generator=generator).float() * 2 - 1
    return signs * 2.0 ** torch.randint(-2, 3, (rows, 1), generator=generator).float()


def _ranking_case(device: torch.device, seed: int, num_queries: int, gallery_size: int, multilabel: bool):
    g = torch.Generator().manual_seed(seed)
    q, gallery = _exact_rows(g, num_queries), _exact_rows(g, gallery_size)
    if multilabel:   # some rows with no label: NaN APs, as multi-label queries with nothing relevant
        yq = (torch.rand(num_queries, 5, generator=g) < 0.3).float()
        yg = (torch.rand(gallery_size, 5, generator=g) < 0.3).float()
    else:
        yq, yg = torch.randint(0, 3, (num_queries,), generator=g), torch.randint(0, 3, (gallery_size,), generator=g)
    return [t.to(device) for t in (q, yq, gallery, yg)]


def _probe_average_precisions(device: torch.device):
    fast_impl, ref_impl = _impls("average_precisions")["triton"], reference.average_precisions
    fast, ref = {}, {}
    # MAP@all: the sort path; MAP@3: the fused top-k kernel; single- and multi-label walks.
    for name, k, multilabel, seed in (("AP@all", None, False, 201), ("AP@3, multi-label", 3, True, 202)):
        args = _ranking_case(device, seed, 3, 7, multilabel)
        fast[name], ref[name] = fast_impl(*args, k=k), ref_impl(*args, k=k)
    return fast, ref, 1e-12


def _probe_hits_at(device: torch.device):
    fast_impl, ref_impl = _impls("hits_at")["triton"], reference.hits_at
    args = _ranking_case(device, 203, 3, 7, False)
    return fast_impl(*args, [1, 4, 7]), ref_impl(*args, [1, 4, 7]), 0.0


def _probe_topk(device: torch.device):
    fast_impl, ref_impl = _search_impls()["triton"], _search_impls()["torch"]
    g = torch.Generator().manual_seed(204)
    q, gallery = _exact_rows(g, 3).to(device), _exact_rows(g, 21).to(device)
    # k = 5: the fused kernel over two gallery slices; its keys carry the scores, compared too.
    fast, ref = fast_impl(q, gallery, 5), ref_impl(q, gallery, 5)
    return {"scores": fast[0], "indices": fast[1]}, {"scores": ref[0], "indices": ref[1]}, 0.0


selfcheck.register("evaluate_map", _probe_average_precisions)
selfcheck.register("precision_recall", _probe_hits_at)
selfcheck.register("topk", _probe_topk)
