"""The MAP benchmarks and the GPU suite's MAP section, at tiny sizes, so that they cannot rot."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drcl_fast.retrieval import cpp, reference
from drcl_fast.retrieval import triton as triton_backend

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_cpu_map_benchmarks_and_table(tmp_path):
    report = tmp_path / "map.json"
    # Every case once, each checking its MAP against the reference.
    run("-m", "pytest", "bench/cpu/bench_map.py", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
        env={"DRCL_BENCH_SIZE": "tiny"})
    # Timed (a few milliseconds at this size), for the table script.
    run("-m", "pytest", "bench/cpu/bench_map.py", "-q", "-p", "no:cacheprovider", f"--benchmark-json={report}",
        "-k", "single10", env={"DRCL_BENCH_SIZE": "tiny"})
    names = {b["extra_info"]["impl"] for b in json.loads(report.read_text())["benchmarks"]}
    assert names == {"released", "torch", "torch@50", "matmul"} | ({"cpp", "cpp@50"} if cpp.AVAILABLE else set())
    table = run("bench/cpu/map_table.py", str(report))
    assert "| single10 | torch |" in table and "vs released" in table


def table_rows(text: str, first: str) -> list[list[str]]:
    """The cells of each markdown table row of `text` whose first cell starts with `first`."""
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith(f"| {first}")]


# Allocator and library overhead beyond what the design accounts for (page rounding, per-thread scratch).
SLACK_MIB = 8


def design_budget_mib(backend: str, max_memory: str, size: int, inputs_mib: float) -> float:
    """Peak memory the design allows one evaluation: unit-row copies of both embedding matrices plus
    one query chunk's working set, sized by the backend's own rule; plus SLACK_MIB."""
    budget = reference.DEFAULT_MAX_MEMORY if max_memory == "default" else float(max_memory.split()[0]) * 2**20
    per_pair = reference._BYTES_PER_PAIR if backend == "torch" else cpp._BYTES_PER_SCORE_PAIR[torch.float32]
    chunk = reference.auto_chunk_size(size, size, int(budget), per_pair) * size * per_pair
    return 2 * inputs_mib + chunk / 2**20 + SLACK_MIB


def test_memory_probe_is_bounded_and_ordered():
    # Q = N = 1,000: a 1 MiB budget makes cpp rank 174-query chunks instead of all 1,000 queries at once.
    out = run("bench/cpu/map_memory.py", "--size", "1000", "--bounded", "1")
    peaks = {}
    for labels in ("single10", "multi21"):
        rows = table_rows(out, labels)
        assert len(rows) == (4 if cpp.AVAILABLE else 1), out
        for _, backend, k, max_memory, size, inputs_mib, peak in rows:
            peak_mib = float(peak)
            assert math.isfinite(peak_mib) and 0 <= peak_mib <= design_budget_mib(
                backend, max_memory, int(size), float(inputs_mib)), (labels, backend, k, max_memory, peak)
            peaks[labels, backend, k, max_memory] = peak_mib
        if cpp.AVAILABLE:  # the reference's matrices > cpp's one score chunk
            assert peaks[labels, "torch", "all", "default"] > peaks[labels, "cpp", "all", "default"], peaks
    # > a smaller chunk, where the chunk is what the peak holds beyond the inputs: single-label. The
    # multi-label peak is not the score chunk's (1 MiB chunks read within 0.2-2 MiB of the default's, on
    # either side of it, at Q = N = 1,000 and 2,000), so its order there is noise.
    if cpp.AVAILABLE:
        assert peaks["single10", "cpp", "all", "default"] > peaks["single10", "cpp", "all", "1 MiB"], peaks


@pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")
def test_gpu_suite_map_section_smoke():
    out = run("bench/gpu/gpu_suite.py", "--smoke", "--only", "gpu_map", env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_map |")]
    assert len(rows) >= 1 + 6 + 6 + 1, out
    assert "FAIL" not in out and "| ok |" in rows[0]


@pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")
def test_gpu_suite_kernel_section_smoke():
    out = run("bench/gpu/gpu_suite.py", "--smoke", "--only", "gpu_kernels", env={"TRITON_INTERPRET": "1"})
    assert "| gpu_kernels | resource summary | n/a | the interpreter compiles nothing |" in out, out
