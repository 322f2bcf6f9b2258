"""The MAP benchmarks and the GPU suite's MAP section, at tiny sizes, so that they cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drcl_fast.retrieval import cpp
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
    run("-m", "pytest", "bench/bench_map.py", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
        env={"DRCL_BENCH_SIZE": "tiny"})
    # Timed (a few milliseconds at this size), for the table script.
    run("-m", "pytest", "bench/bench_map.py", "-q", "-p", "no:cacheprovider", f"--benchmark-json={report}",
        "-k", "single10", env={"DRCL_BENCH_SIZE": "tiny"})
    names = {b["extra_info"]["impl"] for b in json.loads(report.read_text())["benchmarks"]}
    assert names == {"released", "torch", "torch@50", "matmul"} | ({"cpp", "cpp@50"} if cpp.AVAILABLE else set())
    table = run("bench/map_table.py", str(report))
    assert "| single10 | torch |" in table and "vs released" in table


def test_memory_probe_tiny():
    out = run("bench/map_memory.py", "--size", "200")
    lines = [line for line in out.splitlines() if line.startswith("| single10") or line.startswith("| multi21")]
    assert len(lines) == (8 if cpp.AVAILABLE else 2)
    assert all(float(line.split("|")[-2]) >= 0 for line in lines)


@pytest.mark.skipif(not triton_backend.AVAILABLE, reason="triton is not installed")
def test_gpu_suite_map_section_smoke():
    out = run("bench/gpu_suite.py", "--smoke", "--only", "gpu_map", env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_map |")]
    assert len(rows) >= 1 + 6 + 6 + 1, out
    assert "FAIL" not in out and "| ok |" in rows[0]
