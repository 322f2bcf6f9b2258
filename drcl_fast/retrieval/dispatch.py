"""Which implementation ranks: the reference, the C++ extension or the Triton kernels.

Every implementation takes (query, query_labels, gallery, gallery_labels, ...,
max_memory=) and returns the reference's result exactly; a backend that is not
usable in this process is registered as None, so "auto" falls back and says so once.
"""
from __future__ import annotations

from typing import Callable

import torch

from drcl_fast.backends import choose
from drcl_fast.retrieval import cpp, reference
from drcl_fast.retrieval import triton as triton_backend


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


def memory_budget(max_memory: int | None) -> dict[str, int]:
    """The max_memory= keyword for an implementation; none for None, so that each keeps its own default."""
    return {} if max_memory is None else {"max_memory": max_memory}
