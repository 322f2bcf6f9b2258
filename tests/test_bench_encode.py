"""bench/cpu/encode.py at its tiny size, so that it cannot rot: the table it writes and the arithmetic in it."""
from __future__ import annotations

import re

from tests.test_bench_smoke import run, table_rows  # run: a subprocess from the repository root, output checked


def test_encode_benchmark_table(tmp_path):
    out = tmp_path / "encode.md"
    printed = run("bench/cpu/encode.py", "--out", str(out), env={"DRCL_BENCH_SIZE": "tiny", "OMP_NUM_THREADS": "1"})
    text = out.read_text()
    assert printed == text and "OMP_NUM_THREADS=1" in text and "load average" in text
    assert re.search(r"machine: .+ \(\d+ logical cores\)", text) and "torch 2." in text
    (load,) = table_rows(text, "load_model")
    (encode,) = table_rows(text, "encode 1,000 rows")
    assert len(load) == len(encode) == 6
    runs = [float(t) for t in encode[2].split(", ")]
    median, gflops, floor, fraction = (float(encode[1].rstrip(" s")), float(encode[3]), float(encode[4].rstrip(" s")),
                                       float(encode[5].rstrip(" %")))
    assert len(runs) == 3 and median == sorted(runs)[1] and float(load[1].rstrip(" s")) >= 0
    # d = 96, H = 128, D = 32 over 1,000 rows: 2 n (d H + H H + H D) FLOP.
    flops = 2 * 1000 * (96 * 128 + 128 * 128 + 128 * 32)
    # Times are printed to four significant digits, GFLOP/s to 0.1 and the fraction to 1 %.
    assert abs(gflops - flops / median / 1e9) <= 0.002 * gflops + 0.05
    assert 0 < fraction and abs(fraction - 100 * floor / median) <= 0.002 * fraction + 0.5
