"""Timing, memory and step helpers shared by the GPU suite's sections (gpu_map.py, gpu_train.py, gpu_search.py)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def timed(fn: Callable[[], Any], device: str, repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """(median seconds per call, the last call's result), after one warm-up call (which compiles and
    autotunes) unless `warmup` is False; CUDA events on a GPU, wall time on a CPU."""
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times), result


def peak_bytes(fn: Callable[[], Any], device: str) -> int | None:
    """Device memory one call allocates beyond what was allocated before it; None off CUDA (the CPU's
    peaks are measured by bench/cpu/loss_memory.py and bench/cpu/map_memory.py)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def run_steps(suite: Any, section: str, steps: tuple[Callable[[Any], None], ...]) -> None:
    """Each step of a section in turn. A GPU run is one costly call: a step that fails is reported in
    the table, with its type and message, and the others still run."""
    for step in steps:
        try:
            step(suite)
        except Exception as error:  # noqa: BLE001 - reported in the table
            suite.add(section, step.__name__, "FAIL", f"{type(error).__name__}: {error}"[:300].replace("|", "/"))
