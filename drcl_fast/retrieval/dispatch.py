"""Which implementation ranks: the reference, the C++ extension or the Triton kernels.

Every evaluator takes (query, query_labels, gallery, gallery_labels, ...,
max_memory=), every top-k search (queries, gallery, k, max_memory=) on checked
tensors, and each returns the reference's result exactly; a backend that is not
usable in this process is registered as None, so "auto" falls back and says so once.
The Triton functions are handed out only after their probes pass
(``drcl_fast.runtime.selfcheck``): tiny rankings compared exactly with the reference's,
beside the kernels in ``kernels/map_ranked.py`` and ``kernels/map_topk.py``.
"""
from __future__ import annotations

from typing import Callable

import torch

from drcl_fast.retrieval import cpp, reference
from drcl_fast.retrieval import triton as triton_backend
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

