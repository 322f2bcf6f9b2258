"""The training benchmarks and the GPU suite's training section, at tiny sizes, so that they cannot rot."""
from __future__ import annotations

import json

from tests.test_bench_smoke import run   # a subprocess from the repository root, PYTHONPATH set, output checked


def test_cpu_loss_benchmarks_table_and_memory(tmp_path):
    # Every case, each checking its loss against the reference first, timed (milliseconds at this size).
    report = tmp_path / "loss.json"
    run("-m", "pytest", "bench/bench_loss.py", "bench/bench_rsc_step.py", "-q", "-p", "no:cacheprovider",
        f"--benchmark-json={report}", env={"DRCL_BENCH_SIZE": "tiny"})
    benchmarks = json.loads(report.read_text())["benchmarks"]
    cases = {(b["extra_info"]["impl"], b["group"].split()[0]) for b in benchmarks}
    assert cases == {(impl, kind) for impl in ("torch", "restructured") for kind in ("loss", "RSC")}
    assert len(benchmarks) == 8
    fast_loss = [b for b in benchmarks if b["group"].startswith("loss") and b["extra_info"]["impl"] != "torch"]
    assert len(fast_loss) == 2 and all(b["extra_info"]["interleaved_speedup"] > 0 for b in fast_loss)
    table = run("bench/loss_table.py", str(report), "--memory")
    assert "| loss B=64 D=256 C=200 | restructured |" in table and "speed-up" in table
    memory_rows = [line for line in table.splitlines() if line.startswith("| 64 | 256 |")]
    assert len(memory_rows) == 4 and all(float(line.split("|")[5]) >= 0 for line in memory_rows)


def test_loss_grid_quick():
    rows = [line for line in run("bench/loss_grid.py", "--quick").splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 3 and all(("| reference |" in row) != ("| restructured |" in row) for row in rows)


def test_gpu_suite_train_section_smoke(tmp_path):
    out = run("bench/gpu_suite.py", "--smoke", "--only", "gpu_train", "--out", str(tmp_path),
              env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_train |")]
    checks = [row for row in rows if "| check " in row]
    assert len(checks) == 5 and all(row.endswith("| ok |") for row in checks), out
    for case in ("loss fwd+bwd", "torch.mm", "RSC step", "mfeat MAP@all"):
        assert any(case in row for row in rows), case
    assert sum("RSC step" in row for row in rows) == 5
    assert "FAIL" not in out
    assert len(list(tmp_path.glob("gpu_suite_*_smoke.md"))) == 1
