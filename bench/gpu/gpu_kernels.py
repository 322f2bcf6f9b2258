"""GPU suite section: the resources of the Triton kernels this run compiled, on this card.

The compile matrix (tools/kernel_matrix.py, docs/kernel_resources.md) predicts registers,
spills and shared memory on the CPU; this section reads what the card's driver reports
for every kernel the suite's earlier sections launched (Triton's per-device caches), one
row per kernel: how many variants ran, and the largest registers, local memory (spills)
and shared memory among them, against the matrix's spill budget and the card's
shared-memory limit. Run it last (``SECTIONS`` order) so that it sees every launch.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterator

from tools.kernel_matrix import SPILL_BUDGET_BYTES

SECTION = "gpu_kernels"


def _jit_functions() -> Iterator[tuple[str, Any]]:
    """(module.kernel, JITFunction) for every Triton kernel in drcl_fast.kernels (autotuners unwrapped)."""
    import drcl_fast.kernels as package
    from triton.runtime.jit import JITFunction

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            fn = obj
            while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):   # Autotuner, Heuristics
                fn = fn.fn
            # once per kernel, under its own name (not an alias), where it is defined
            if isinstance(fn, JITFunction) and fn.__name__ == name and fn.__module__ == module.__name__:
                yield f"{info.name}.{name}", fn


def compiled(fn: Any) -> list[Any]:
    """The CompiledKernels of `fn` on every device it ran on, their driver handles loaded."""
    kernels = []
    for cache, *_ in fn.device_caches.values():
        for kernel in cache.values():
            kernel._init_handles()   # fills n_regs, n_spills; a no-op once launched
            kernels.append(kernel)
    return kernels


def run(suite) -> None:
    import torch

    if suite.device != "cuda":
        suite.add(SECTION, "resource summary", "n/a", "the interpreter compiles nothing")
        return
    limit = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    name = torch.cuda.get_device_name()
    seen = 0
    for label, fn in sorted(_jit_functions()):
        kernels = compiled(fn)
        if not kernels:
            continue
        seen += 1
        regs = max(k.n_regs for k in kernels)
        local = max(4 * k.n_spills for k in kernels)   # the driver's LOCAL_SIZE_BYTES, as Triton reads it
        shared = max(k.metadata.shared for k in kernels)
        flags = ([f"spills over {SPILL_BUDGET_BYTES} B"] if local > SPILL_BUDGET_BYTES else []) + (
            [f"shared over {limit:,} B"] if shared > limit else [])
        suite.add(SECTION, f"{label}: {len(kernels)} variant(s) ran",
                  f"<= {regs} regs, <= {local} B local, <= {shared:,} B smem", "; ".join(flags) or f"ok on {name}")
    if not seen:
        suite.add(SECTION, "resource summary", "n/a", "no Triton kernel ran in this suite run")
