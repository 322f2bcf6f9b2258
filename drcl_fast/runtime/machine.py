"""The machine side of a run: its device, the backends it can use there, deterministic mode for its duration."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from drcl_fast import ops
from drcl_fast.errors import ConfigError
from drcl_fast.retrieval import dispatch as retrieval_dispatch


def resolve_device(name: str) -> torch.device:
    """The torch device `--device` names ("auto": CUDA when present, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return device


def check_backends(backend: str, device: torch.device) -> None:
    """Raise BackendError now, not after training, if the training ops or the evaluator cannot run `backend`.

    This also runs the self-check of every Triton kernel the run would use (``drcl_fast.runtime.selfcheck``):
    one that fails is refused now for backend "triton", and passed over with a warning for "auto".
    """
    ops.check_backend(backend, device)
    retrieval_dispatch.average_precisions(backend, device)
    retrieval_dispatch.hits_at(backend, device)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic mode for the run only: the caller's setting (and cuBLAS's) come back after."""
    if not enabled:
        yield
        return
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    # cuBLAS reads this when its first handle is made: in time unless CUDA already ran.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
