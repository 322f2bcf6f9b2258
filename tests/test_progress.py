"""Progress bars on a terminal only; elsewhere (a log file, CI, a notebook's captured output) a
start and an end line per unit and phase, with its time, and no carriage-return fragments."""
from __future__ import annotations

import io
import os
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from drcl_fast.retrieval import evaluate_directions
from drcl_fast.runtime import progress

REPO = Path(__file__).resolve().parent.parent
# Two units at once (a thread each): the case whose two bars interleaved in a log.
TINY = ["-m", "drcl_fast", "train", "--datasets", "mfeat", "--epochs", "3", "--hidden_shape", "32",
        "--output-shape", "16", "--batch_size", "200", "--device", "cpu", "--concurrent_units", "2"]
UNITS = [f"{phase} {name}" for phase in ("SPL", "RSC") for name in ("fou", "fac", "kar", "pix", "zer", "mor")]


def train_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": "100"}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.on_terminal() and progress.epoch_bar(3, "RSC x", enabled=True).disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.on_terminal() and not progress.epoch_bar(3, "RSC x", enabled=True).disable
    assert progress.epoch_bar(3, "RSC x", enabled=False).disable   # --quiet stays quiet on a terminal
    closed = io.StringIO()
    closed.close()
    assert not progress.on_terminal(closed) and not progress.on_terminal(object())


def test_map_bars_only_on_a_terminal(monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 20)
    mods = [rng.normal(size=(20, 4)) for _ in range(3)]
    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        evaluate_directions(mods, [labels] * 3, ["a", "b", "c"], progress=True, backend="torch")
        assert ("MAP@all" in stream.getvalue()) == drawn, stream.getvalue()


def test_a_run_off_a_terminal_writes_a_line_per_unit_and_phase(tmp_path):
    run = subprocess.run([sys.executable, *TINY, "--out", str(tmp_path)], capture_output=True, cwd=REPO,
                         env=train_env(), stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr.decode()
    err = run.stderr.decode()
    assert "\r" not in err and "epoch/s" not in err and "MAP@" not in err, err
    lines = err.splitlines()
    for unit in UNITS:   # its start line, then its end line with what it trained and its time
        name = unit.split()[1]
        assert sum(line.startswith(f"{unit.split()[0]} on modality ") and f"({name})" in line
                   for line in lines) == 1, err
        ends = [line for line in lines if re.match(rf"{unit}: 3 epochs in \d+\.\d s, best ", line)]
        assert len(ends) == 1, err
    assert len(lines) <= 45, err   # the run's log lines only: none per epoch


def test_a_run_on_a_terminal_draws_bars(tmp_path):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    fcntl = pytest.importorskip("fcntl")
    termios = pytest.importorskip("termios")
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # a new pty has 0 columns
    process = subprocess.Popen([sys.executable, *TINY, "--epochs", "2", "--out", str(tmp_path)], cwd=REPO,
                               env=train_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown, deadline = bytearray(), time.monotonic() + 300
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:   # the child closed the terminal (EIO)
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert process.wait(timeout=60) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    for unit in ("SPL fou", "RSC mor"):   # a bar (redrawn in place), and the unit's end line
        assert re.search(rf"\r{unit}:\s+\d+%\|.*epoch/s", text) and re.search(rf"{unit}: 2 epochs in ", text), text
