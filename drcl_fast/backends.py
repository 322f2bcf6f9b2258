"""One dispatch rule for every op that has several implementations.

An op registers its implementations by backend name ("torch" is always the
reference). `backend="auto"` picks the first available entry of the device's
preference list; an explicit backend that is unavailable is an error.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping

import torch

from drcl_fast.errors import BackendError

# "restructured": PyTorch rewritten by algebra (the RSC loss in C-space), for any device.
BACKENDS = ("auto", "torch", "triton", "cpp", "restructured")

# An op with no implementation of its own under these names runs the one named here:
# algebra restructures the loss only, so every other op keeps its reference under it.
STAND_INS = {"restructured": "torch"}

# Fastest first. "torch" closes every list, so "auto" always finds something.
AUTO_PREFERENCE = {
    "cuda": ("triton", "restructured", "torch"),
    "cpu": ("cpp", "restructured", "torch"),
}


_already_said: set[tuple[str, str]] = set()


def say_once(key: tuple[str, str], message: str) -> None:
    """Warn about a fallback the first time it happens in this process only."""
    if key not in _already_said:
        _already_said.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def check_backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def choose(op: str, backend: str, device: torch.device | str,
           impls: Mapping[str, Callable | None]) -> Callable:
    """The implementation of `op` to run for `backend` on `device`.

    `impls` maps backend names to callables, or to None where that backend
    exists in principle but is not usable in this process (not built, no Triton).
    """
    check_backend_name(backend)
    device_type = torch.device(device).type
    if backend != "auto":
        fn = impls.get(backend if backend in impls else STAND_INS.get(backend, backend))
        if fn is None:
            have = [name for name, f in impls.items() if f is not None]
            raise BackendError(
                f"{op}: backend {backend!r} is not available here (usable: {', '.join(have)}); "
                f"pass backend='auto' or one of those")
        if backend == "triton" and device_type != "cuda":
            raise BackendError(f"{op}: backend 'triton' needs CUDA tensors, got {device_type} tensors; "
                               f"move the inputs to a GPU or pass backend='auto'")
        return fn
    preference = AUTO_PREFERENCE.get(device_type, ("torch",))
    for name in preference:
        fn = impls.get(name)
        if fn is not None:
            skipped = [p for p in preference[:preference.index(name)] if p in impls]
            if skipped:
                say_once((op, device_type),
                         f"{op}: the {skipped[0]!r} backend is not available for {device_type} "
                         f"tensors; using {name!r}")
            return fn
    return impls["torch"]
