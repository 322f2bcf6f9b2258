"""Serving on the CPU: load a model folder, encode 100,000 new items, against the encoder's matrix floor.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cpu/encode.py --out bench/results/encode_cpu_<date>.md
    DRCL_BENCH_SIZE=tiny .venv/bin/python bench/cpu/encode.py        # or --size tiny: seconds, for the tests

A model of d = 4,096, H = 4,096, D = 2,048 (seeded weights, a random 2,048 x 10 prior, no
standardisation) is saved to a temporary folder; then `load_model` of that folder and
`TrainedModel.encode` of 100,000 random float32 rows are each timed three times after a warm-up
(one load, one encode chunk), medians reported. The floor is the time the encoder's products,
2 n (d H + H H + H D) FLOP, need at this machine's float32 matrix rate, measured as training's floor
measures it (`drcl_fast.runtime.floor.matrix_rate`, at the encode chunk's rows x H by H x H product), the
faster of a measurement before and one after the encodes.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import drcl_fast
from drcl_fast.model import seeded_encoder
from drcl_fast.runtime.floor import matrix_rate
from drcl_fast.serving import load_model
from drcl_fast.serving.model_folder import ModalityEntry, model_of_run
from drcl_fast.training.modality import ENCODE_CHUNK
from machine import cpu_name, load_average


@dataclass(frozen=True)
class Size:
    rows: int
    input_dim: int
    hidden_dim: int
    output_dim: int
    classes: int


SIZES = {"full": Size(100_000, 4096, 4096, 2048, 10), "tiny": Size(1_000, 96, 128, 32, 10)}
REPEATS = 3


@dataclass(frozen=True)
class Result:
    size: Size
    load_seconds: list[float]
    encode_seconds: list[float]
    rate: float                 # FLOP/s of the matrix product, the faster of before and after
    weights_bytes: int

    @property
    def flops(self) -> int:
        s = self.size
        return 2 * s.rows * (s.input_dim * s.hidden_dim + s.hidden_dim ** 2 + s.hidden_dim * s.output_dim)

    @property
    def floor_seconds(self) -> float:
        return self.flops / self.rate

    @property
    def encode_median(self) -> float:
        return statistics.median(self.encode_seconds)


def save_model(size: Size, folder: Path) -> Path:
    """A one-modality model of `size`'s widths, written as a model folder; returns the folder."""
    state = seeded_encoder(size.input_dim, size.hidden_dim, size.output_dim, seed=0).state_dict()
    prior = torch.randn(size.output_dim, size.classes, generator=torch.Generator().manual_seed(1))
    model = model_of_run("bench", ["features"], {0: state}, {0: ModalityEntry(0, "features", size.input_dim)},
                         prior, None)
    return model.save(folder)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn`."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(size: Size, repeats: int = REPEATS) -> Result:
    """Load and encode times of a model of `size`, and the matrix rate around them."""
    device = torch.device("cpu")
    rows = np.random.default_rng(2).standard_normal((size.rows, size.input_dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_model(size, Path(scratch) / "model")
        weights_bytes = sum(f.stat().st_size for f in folder.iterdir())
        model = load_model(folder)
        model.encode("features", rows[:ENCODE_CHUNK])          # warm-up: one chunk
        before = matrix_rate(size.hidden_dim, min(ENCODE_CHUNK, size.rows), device)
        load_seconds = timed(lambda: load_model(folder), repeats)
        encode_seconds = timed(lambda: model.encode("features", rows), repeats)
        after = matrix_rate(size.hidden_dim, min(ENCODE_CHUNK, size.rows), device)
    return Result(size, load_seconds, encode_seconds, max(before, after), weights_bytes)


def table(result: Result, load_before: str, load_after: str) -> str:
    """The result as markdown: the setting, then one row per timed operation."""
    s = result.size
    encode = result.encode_median
    header = [
        f"# Load a model and encode {s.rows:,} items on the CPU (bench/cpu/encode.py)",
        "",
        f"- machine: {cpu_name()} ({os.cpu_count()} logical cores); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
        f"(torch threads {torch.get_num_threads()}); load average (1, 5, 15 min) {load_before} before, "
        f"{load_after} after",
        f"- versions: drcl_fast {drcl_fast.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}; date: {datetime.date.today().isoformat()}",
        f"- model: d = {s.input_dim:,}, H = {s.hidden_dim:,}, D = {s.output_dim:,}, {s.classes} classes; "
        f"folder {result.weights_bytes / 2**20:,.1f} MiB; {s.rows:,} random float32 rows",
        f"- times: {REPEATS} runs after a warm-up, median (all runs); floor: {result.flops / 1e9:,.1f} GFLOP "
        f"of encoder products at the measured float32 matrix rate, {result.rate / 1e9:.1f} GFLOP/s "
        f"({min(ENCODE_CHUNK, s.rows):,} x {s.hidden_dim:,} by {s.hidden_dim:,} x {s.hidden_dim:,})",
        "",
        "| operation | median | runs | GFLOP/s | floor | fraction of the floor |",
        "|---|---:|---|---:|---:|---:|",
        f"| load_model | {statistics.median(result.load_seconds):.4g} s | {_runs(result.load_seconds)} | "
        f"— | — | — |",
        f"| encode {s.rows:,} rows | {encode:.4g} s | {_runs(result.encode_seconds)} | "
        f"{result.flops / encode / 1e9:.1f} | {result.floor_seconds:.4g} s | "
        f"{100 * result.floor_seconds / encode:.0f} % |",
    ]
    return "\n".join(header) + "\n"


def _runs(seconds: list[float]) -> str:
    return ", ".join(f"{t:.4g}" for t in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=os.environ.get("DRCL_BENCH_SIZE", "full"),
                        help="full (default) or tiny (also DRCL_BENCH_SIZE=tiny)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    load_before = load_average()
    text = table(measure(SIZES[args.size]), load_before, load_average())
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
