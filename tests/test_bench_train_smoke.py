"""The training benchmarks and the GPU suite's training section, at tiny sizes, so that they cannot rot."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tests.test_bench_smoke import run, table_rows  # run: a subprocess from the repository root, output checked


def test_cpu_loss_benchmarks_table_and_memory(tmp_path):
    # Every case, each checking its loss against the reference first, timed (milliseconds at this size).
    report = tmp_path / "loss.json"
    run("-m", "pytest", "bench/cpu/bench_loss.py", "bench/cpu/bench_rsc_step.py", "-q", "-p", "no:cacheprovider",
        f"--benchmark-json={report}", env={"DRCL_BENCH_SIZE": "tiny"})
    benchmarks = json.loads(report.read_text())["benchmarks"]
    cases = {(b["extra_info"]["impl"], b["group"].split()[0]) for b in benchmarks}
    step_impls = ("torch", "restructured-autograd", "restructured-python", "restructured")
    assert cases == {(impl, "loss") for impl in ("torch", "restructured")} | {(impl, "RSC") for impl in step_impls}
    assert len(benchmarks) == 2 * 2 + 2 * len(step_impls)   # two shapes each
    table = run("bench/cpu/loss_table.py", str(report), "--memory")
    assert "| loss B=64 D=256 C=200 | restructured |" in table and "speed-up" in table
    check_speed_rows(benchmarks, table)
    check_memory_rows(table_rows(table, "64 | 256 |"))


def check_speed_rows(benchmarks: list[dict], table: str) -> None:
    """Each table row shows its case's times and the speed-ups recomputed from them, rounded as printed."""
    stats = {(b["group"], b["extra_info"]["impl"]): b for b in benchmarks}
    rows = table_rows(table, "")
    rows = [row for row in rows if (row[0], row[1]) in stats]
    assert len(rows) == len(benchmarks)
    for group, impl, median_ms, min_ms, by_median, by_min, interleaved in rows:
        bench, ref = stats[group, impl]["stats"], stats[group, "torch"]["stats"]
        assert median_ms == f"{bench['median'] * 1e3:.1f}" and min_ms == f"{bench['min'] * 1e3:.1f}"
        assert by_median == f"{ref['median'] / bench['median']:.2f}x" and by_min == f"{ref['min'] / bench['min']:.2f}x"
        alternating = stats[group, impl]["extra_info"].get("interleaved_speedup")
        # Timed in the loss cases' fast implementation only; a ratio of two medians of positive times.
        assert (alternating is not None) == (group.startswith("loss") and impl != "torch")
        assert interleaved == ("-" if alternating is None else f"{alternating:.2f}x")
        assert alternating is None or 0 < alternating < math.inf


def check_memory_rows(rows: list[list[str]]) -> None:
    """Peaks are finite, within a small multiple of what one forward+backward holds, and the ratio
    column is the ratio of the peaks."""
    assert len(rows) == 4
    peaks = {(int(c), impl): float(peak) for _, _, c, impl, peak, _ in rows}
    for b, d, c, impl, peak, ratio in rows:
        b, d, c = int(b), int(d), int(c)
        # f~ and its gradient (B x D), targets, logits and their gradient (B x C), L (C x D), one B x B product.
        working_set_mib = 4 * (2 * b * d + 3 * b * c + c * d + b * b) / 2**20
        assert math.isfinite(float(peak)) and 0 <= float(peak) <= 8 * working_set_mib + LOSS_SLACK_MIB, (c, impl, peak)
        assert ratio_within_rounding(ratio, float(peak), peaks[c, "torch"])


def ratio_within_rounding(ratio: str, peak: float, reference_peak: float, half: float = 0.05) -> bool:
    """Whether the printed ratio can be peak / reference_peak, both printed to 0.1 MiB: '—' only for a
    reference of 0, else a value between the ratios of the ends of their rounding intervals."""
    if ratio == "—":
        return reference_peak == 0
    low = max(peak - half, 0) / (reference_peak + half)
    high = (peak + half) / (reference_peak - half) if reference_peak > half else math.inf
    return low - 0.005 <= float(ratio) <= high + 0.005


# Page rounding and autograd bookkeeping: tiny sizes peak at a fraction of a MiB, whatever the design.
LOSS_SLACK_MIB = 2


def test_loss_grid_quick():
    rows = [line for line in run("bench/cpu/loss_grid.py", "--quick").splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 3 and all(("| reference |" in row) != ("| restructured |" in row) for row in rows)


def test_gpu_suite_train_section_smoke(tmp_path):
    out = run("bench/gpu/gpu_suite.py", "--smoke", "--only", "gpu_train", "--out", str(tmp_path),
              env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_train |")]
    checks = [row for row in rows if "| check " in row]
    assert len(checks) == 5 and all(row.endswith("| ok |") for row in checks), out
    for case in ("loss fwd+bwd", "torch.mm", "RSC step", "mfeat MAP@all"):
        assert any(case in row for row in rows), case
    assert sum("RSC step" in row for row in rows) == 5
    assert "FAIL" not in out
    assert len(list(tmp_path.glob("gpu_suite_*_smoke.md"))) == 1


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_gpu_suite_pipeline_section_smoke():
    out = run("bench/gpu/gpu_suite.py", "--smoke", "--only", "gpu_pipeline", env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_pipeline |")]
    # Off a GPU only fp32 runs: tf32 is a GPU format, and a CPU run refuses bf16 without the instructions
    # (the interpreter has no bf16 tl.dot either); on a GPU the section adds a row for tf32 and bf16.
    assert len(rows) == 3 and not any("FAIL" in row for row in rows), out
    cases = ("reference (torch, fp32)", "fast (auto, fp32)", "fast (auto, fp32, units at once)")
    for row, case in zip(rows, cases):
        assert case in row and "s end to end: SPL" in row and "MAP@all 0." in row, row
    # Under the interpreter the units run one after another (it is not thread-safe): the equality the
    # row reports is checked on a GPU; tests/training/test_units.py checks units at once on the CPU.
    assert "the one-after-another run" in rows[-1]


def test_gpu_suite_distributed_section_smoke():
    out = run("bench/gpu/gpu_suite.py", "--smoke", "--only", "gpu_distributed", env={"TRITON_INTERPRET": "1"})
    rows = [line for line in out.splitlines() if line.startswith("| gpu_distributed |")]
    assert len(rows) == 1 and "14 files equal byte for byte" in rows[0] and "FAIL" not in rows[0], out


def test_lr_auto_bench_smoke():
    out = run("bench/cpu/lr_auto.py", "--smoke")
    rows = [line for line in out.splitlines() if line.startswith("| mfeat |") or line.startswith("| synthetic")]
    assert len(rows) == 6, out
    assert sum("auto, val_loss" in row for row in rows) == 2 and sum("auto, val_map" in row for row in rows) == 2


@pytest.mark.parametrize("units", ["1", "auto"])
def test_cpu_training_run_bench_smoke(units):
    out = run("bench/cpu/train_cpu.py", "wiki-sized", "--epochs", "1", "--units", units, "--label", "smoke")
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"smoke wiki-sized units={units}: ") and "MAP@all" in line and "matrix-product speed" in line


def test_cpu_training_run_bench_emulated_bf16_smoke():
    # The NUS-like case (empty label rows) as a bf16 run on any CPU: the emulation checked against torch's
    # own bf16 products first, then the run's products counted as intercepted.
    out = run("bench/cpu/train_cpu.py", "nus-like", "--epochs", "1", "--emulate-bf16", "--label", "smoke")
    check, intercepted, line = out.strip().splitlines()[-3:]
    assert check.startswith("emulation check against torch's bf16 products") and check.endswith(": ok"), out
    assert intercepted.startswith("emulated bf16 products: ") and "aten.addmm.out" in intercepted, out
    assert line.startswith("smoke nus-like units=1 (emulation: one at a time): bf16 emulated") and "MAP@all" in line


@pytest.mark.parametrize("phase", ["rsc", "spl"])
def test_units_step_bench_smoke(phase):
    out = run("bench/cpu/units_step.py", "--phase", phase, "--batch", "24", "--rows", "60", "--input", "7",
              "--hidden", "32", "--output", "16", "--steps", "3", "--warmup", "1", "--rounds", "1")
    rows = [line.split() for line in out.splitlines() if line.endswith(" ms a step")]
    assert [row[0] for row in rows] == ["autograd", "python", "native"], out   # make test builds _step_cpp
    assert all(len(row) == 6 and all(float(v) > 0 for v in row[1:3]) for row in rows), out
