"""One dispatch rule, and one list of backend names, for every op that has several implementations.

An op registers its implementations by backend name ("torch" is always the
reference). A backend name chooses that implementation for every op that has
one under it, and the best available (what "auto" picks) for every op that has
none: `--backend cpp` ranks MAP in C++ and trains with the fastest training ops,
`--backend restructured` trains with the restructured loss and ranks with the
fastest evaluator. An op's own backend that is unavailable (not built, no
Triton, no GPU) is an error. A Triton implementation must first pass its
self-check on the device (``drcl_fast.runtime.selfcheck``): where it fails, "auto" moves
on to the next implementation and an explicit "triton" is an error.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Collection, Mapping

import torch

from drcl_fast.errors import BackendError
from drcl_fast.runtime import selfcheck

# Every backend name the package knows, with what it means: the CLI's choices and help come from here.
BACKENDS = {
    "auto": "the fastest implementation available for the tensors' device",
    "torch": "the PyTorch reference",
    "triton": "Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)",
    "cpp": "the C++ extension (MAP ranking on the CPU)",
    "restructured": "PyTorch restructured by algebra (the RSC loss in C-space)",
}

# Fastest first. "torch" closes every list, so "auto" always finds something.
AUTO_PREFERENCE = {
    "cuda": ("triton", "restructured", "torch"),
    "cpu": ("cpp", "restructured", "torch"),
}


def flag_options() -> dict[str, object]:
    """argparse options of every command's --backend flag: the names and their meanings from BACKENDS."""
    meanings = "; ".join(f"{name}: {meaning}" for name, meaning in BACKENDS.items())
    return dict(default="auto", choices=list(BACKENDS), metavar="NAME",
                help=f"how ops run. {meanings} (default: auto)")


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


def picks_automatically(backend: str, impls: Mapping[str, Callable | None]) -> bool:
    """Whether `backend` leaves the choice among `impls` to the "auto" rule (the op has none of that name)."""
    return backend == "auto" or backend not in impls


def choose(op: str, backend: str, device: torch.device | str, impls: Mapping[str, Callable | None],
           exclude: Collection[str] = ()) -> Callable:
    """The implementation of `op` to run for `backend` on `device`.

    `impls` maps backend names to callables, or to None where that backend
    exists in principle but is not usable in this process (not built, no Triton).
    `exclude` names implementations the "auto" rule must pass over.

    A "triton" implementation is handed out only once it has passed its self-check
    on this device (``drcl_fast.runtime.selfcheck``): where it fails, "auto" takes what it
    would pick without it (saying so once), and an explicit backend="triton" is a BackendError.
    """
    name = pick(op, backend, device, impls, exclude)
    if name == "triton":
        found = selfcheck.verdict(op, device)
        if found is not None and not found.ok:
            if not picks_automatically(backend, impls) and backend not in exclude:
                raise BackendError(found.refusal())
            fallback = pick(op, "auto", device, impls, {*exclude, "triton"})
            selfcheck.warn_fallback(found, fallback)
            return impls[fallback]
    return impls[name]


def pick(op: str, backend: str, device: torch.device | str, impls: Mapping[str, Callable | None],
         exclude: Collection[str] = ()) -> str:
    """The rule itself: the name of the implementation `choose` runs, before any self-check."""
    check_backend_name(backend)
    device_type = torch.device(device).type
    if not picks_automatically(backend, impls) and backend not in exclude:
        if impls[backend] is None:
            have = [name for name, f in impls.items() if f is not None]
            raise BackendError(
                f"{op}: backend {backend!r} is not available here (usable: {', '.join(have)}); "
                f"pass backend='auto' or one of those")
        if backend == "triton" and device_type != "cuda" and not triton_interpreted():
            raise BackendError(f"{op}: backend 'triton' needs CUDA tensors, got {device_type} tensors; "
                               f"move the inputs to a GPU or pass backend='auto'")
        return backend
    preference = [name for name in AUTO_PREFERENCE.get(device_type, ("torch",)) if name not in exclude]
    for name in preference:
        if impls.get(name) is not None:
            skipped = [p for p in preference[:preference.index(name)] if p in impls]
            if skipped:
                say_once((op, device_type),
                         f"{op}: the {skipped[0]!r} backend is not available for {device_type} "
                         f"tensors; using {name!r}")
            return name
    return "torch"


TRAINING_BACKENDS = ("triton", "restructured", "torch")   # those that implement the training ops


def interprets_triton(backend: str, device_type: str) -> bool:
    """Whether training ops with `backend` run Triton kernels in its interpreter on this device type."""
    if not triton_interpreted() or device_type == "cuda":
        return False
    if backend == "auto":
        backend = next(n for n in (*AUTO_PREFERENCE.get(device_type, ()), "torch") if n in TRAINING_BACKENDS)
    return backend == "triton"


def triton_interpreted() -> bool:
    """Triton's CPU interpreter is on: its kernels then run on CPU tensors (slowly), as the tests run them."""
    return os.environ.get("TRITON_INTERPRET") == "1"
