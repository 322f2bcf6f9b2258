"""Ctrl-C and SIGTERM: every unit stops at its next step, saves its checkpoint, one line, exit 130 / 143.

Each interruption is a real signal to a real `drcl-fast train` (or to torchrun), sent when the
run's log shows it has reached the phase the test is about: units trained at once and one at a
time, during SPL and during RSC. The resumed run must end with exactly the metrics of an
uninterrupted one, and the rerun without --resume must say --resume.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from drcl_fast.cli import main
from drcl_fast.errors import OutputExistsError
from drcl_fast.runtime import interrupt
from drcl_fast.training import rsc
from drcl_fast.training.trainer import fit
from tests.support import REPO, torchrun_command, torchrun_env

EPOCHS = 6
FLAGS = ["--datasets", "mfeat", "--epochs", str(EPOCHS), "--hidden_shape", "64", "--output_shape", "16",
         "--batch_size", "200", "--device", "cpu", "--checkpoint_every", "1", "--quiet"]
TRAIN = [sys.executable, "-m", "drcl_fast", "train", *FLAGS]
# One intra-op thread, whether the units train at once or not: the same bits either way (tests/training/test_units.py).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RESUME_HINT = "run the same command with --resume to continue"
CRASHES = ("Traceback", "terminate called", "core dumped")

# `drcl-fast train` whose save of a stopped unit pauses half-written, saying so on stderr: the window
# in which a second signal must end the process at once and leave the previous checkpoint whole.
SLOW_SAVE = """
import sys, time
from drcl_fast import cli
from drcl_fast.runtime import interrupt
from drcl_fast.training import checkpoint
real = checkpoint.atomic_write
def slow(path, write):
    def half(tmp):
        tmp.write_bytes(b"PK half a checkpoint")
        sys.stderr.write("test: saving the stopped unit\\n")
        time.sleep(120)
    real(path, half if interrupt.requested() else write)
checkpoint.atomic_write = slow
sys.exit(cli.main(sys.argv[1:]))
"""


def epoch_lines(out: Path, phase: str) -> int:
    """The `phase` epochs the run has logged so far (every rank's log under torchrun)."""
    folder = out / "logging"
    logs = folder.glob("mfeat*.log") if folder.is_dir() else []
    pattern = re.compile(rf"{phase} \w+ epoch \d+/{EPOCHS}:")
    return sum(len(pattern.findall(p.read_text(errors="replace"))) for p in logs)


def signal_when(process: subprocess.Popen, out: Path, phase: str, epochs: int, signum: int) -> None:
    """Send `signum` once the run has logged `epochs` epochs of `phase` (its own progress, not a clock)."""
    deadline = time.monotonic() + 240
    while process.poll() is None and epoch_lines(out, phase) < epochs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before {epochs} {phase} epochs: {process.communicate()}"
    process.send_signal(signum)


def train(out: Path, *extra: str, command: list[str] = TRAIN) -> subprocess.Popen:
    return subprocess.Popen([*command, "--out", str(out), *extra], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout + stderr


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def no_checkpoints(out: Path) -> bool:
    return not (out / "checkpoints").is_dir() or not list((out / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread in this process too, as in the runs it starts (ENV): the same bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def in_process(out: Path, *extra: str, capsys=None) -> tuple[int, str]:
    """`drcl-fast train` with FLAGS in this process (no start-up to pay): its exit status and stderr."""
    try:
        code = main(["train", *FLAGS, "--out", str(out), *extra])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err if capsys is not None else ""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> dict:
    """metrics.json of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert in_process(out)[0] == 0
    return metrics(out)


@pytest.mark.parametrize("phase, signum, at_once, lines", [
    ("SPL", signal.SIGINT, "2", 8),    # two SPL units at once, a third of the way into SPL
    ("RSC", signal.SIGTERM, "1", 8),   # RSC, one unit after another, as a scheduler stops a job
    ("RSC", signal.SIGINT, "2", 14),   # two RSC units at once, past the first pair
], ids=["SPL-SIGINT-units-at-once", "RSC-SIGTERM-one-at-a-time", "RSC-SIGINT-units-at-once"])
def test_a_signal_stops_every_unit_and_resume_gives_the_uninterrupted_metrics(
        reference, tmp_path, capsys, phase, signum, at_once, lines):
    out = tmp_path / "run"
    run = train(out, "--concurrent_units", at_once)
    signal_when(run, out, phase, lines, signum)
    code, output = finish(run)
    assert code == 128 + signum, output
    assert not any(crash in output for crash in CRASHES), output
    name = signal.Signals(signum).name
    said = [line for line in output.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].startswith(f"drcl-fast train: interrupted ({name}) during {phase} on modalit")
    assert f"; checkpoints in {out / 'checkpoints'}; {RESUME_HINT}" in said[0]
    stopped = [int(k) for k in re.findall(r"(\d) \(\w+\)", said[0])]
    assert stopped and len(stopped) <= int(at_once)
    for k in stopped:   # each stopped unit saved where it was, part-way
        record = torch.load(out / "checkpoints" / f"mfeat.{phase.lower()}{k}.pt", weights_only=True)
        assert not record["done"] and "batch" in record["progress"]

    capsys.readouterr()
    code, output = in_process(out, "--concurrent_units", at_once, capsys=capsys)   # the same, without --resume
    assert code == 2, output
    assert f"checkpoints of this run exist in {out / 'checkpoints'}" in output
    assert output.index("--resume") < output.index("--overwrite"), output

    assert in_process(out, "--concurrent_units", at_once, "--resume")[0] == 0
    assert metrics(out) == reference
    assert no_checkpoints(out)


def test_with_checkpoints_off_it_stops_cleanly_saying_nothing_can_be_resumed(tmp_path):
    out = tmp_path / "run"
    run = train(out, "--checkpoint_every", "0")
    signal_when(run, out, "RSC", 3, signal.SIGINT)
    code, output = finish(run)
    assert code == 130 and not any(crash in output for crash in CRASHES), output
    assert "drcl-fast train: interrupted (SIGINT) during RSC on modality" in output
    assert "checkpoints are off (--checkpoint_every 0), so nothing can be resumed" in output
    assert "--resume" not in output
    assert no_checkpoints(out)


def test_a_second_signal_while_stopping_ends_at_once_and_the_last_checkpoint_stays_whole(reference, tmp_path):
    out = tmp_path / "run"
    run = train(out, command=[sys.executable, "-c", SLOW_SAVE, "train", *FLAGS])
    signal_when(run, out, "RSC", 3, signal.SIGINT)
    started = time.monotonic()
    for line in run.stderr:   # the stop's save has begun, and pauses half-written
        if line.startswith("test: saving the stopped unit"):
            break
    run.send_signal(signal.SIGINT)
    code, output = finish(run, timeout=60)
    assert time.monotonic() - started < 60   # not the 120 s pause: at once
    assert code == 130 and not any(crash in output for crash in CRASHES), output
    assert "SIGINT again: stopped at once" in output
    folder = out / "checkpoints"
    assert list(folder.glob(".mfeat.rsc*.pt.*.tmp"))   # the cut-short save's temporary file, nothing else
    for path in folder.glob("mfeat.*.pt"):
        torch.load(path, weights_only=True)
    assert in_process(out, "--resume")[0] == 0
    assert metrics(out) == reference
    assert no_checkpoints(out)   # the temporary file is gone with the checkpoints


def test_under_torchrun_every_rank_stops_and_the_job_ends(reference, tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(torchrun_command(["-m", "drcl_fast", "train", *FLAGS, "--out", str(out)], nproc=2),
                           cwd=REPO, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        signal_when(job, out, "RSC", 4, signal.SIGINT)   # torchrun forwards it to every rank
        code, output = finish(job, timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert code != 0
    assert "terminate called" not in output, output
    for rank in (0, 1):
        assert re.search(rf"drcl-fast train \(rank {rank}\): interrupted \(SIGINT\) during .*{RESUME_HINT}",
                         output), output
    # The ranks' checkpoints continue in one process (same thread count: the same bits).
    assert in_process(out, "--resume")[0] == 0
    assert metrics(out) == reference


def ctrl_c_at(call: int, monkeypatch) -> None:
    """Ctrl-C from inside the `call`-th RSC batch of this process (a unit's thread: the signal reaches the
    main thread, as a terminal's does)."""
    real, calls, lock = rsc.RSCStep.__call__, [], threading.Lock()

    def counting(*args, **kwargs):
        with lock:      # two units' threads count here: unlocked, both could read 13 and skip 12
            calls.append(1)
            now = len(calls) == call
        if now:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(rsc.RSCStep, "__call__", counting)


@pytest.fixture
def python_default_sigint():
    """Python's own SIGINT handler, the one fit replaces for its duration (it leaves a program's own alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_fit_stops_on_ctrl_c_and_leaves_no_handler_behind(mfeat, tiny_config, monkeypatch, one_thread,
                                                          python_default_sigint):
    cfg = tiny_config.replace(checkpoint_every=1, concurrent_units=2)
    with monkeypatch.context() as patch:
        ctrl_c_at(12, patch)     # the second epoch of the first two RSC units (7 batches an epoch)
        with pytest.raises(KeyboardInterrupt) as stopped:
            fit(mfeat, cfg, progress=False)
    assert isinstance(stopped.value, interrupt.Interrupted)
    assert str(stopped.value).startswith("interrupted (SIGINT) during RSC on modalit")
    assert RESUME_HINT in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupt.requested()

    with pytest.raises(OutputExistsError, match="another run \\(other settings\\)"):
        fit(mfeat, cfg.replace(alpha=0.2), progress=False)
    with pytest.raises(OutputExistsError, match="checkpoints of this run exist .* --resume to continue it"):
        fit(mfeat, cfg, progress=False)
    resumed = fit(mfeat, cfg.replace(resume=True), progress=False)
    plain = fit(mfeat, cfg.replace(out=str(Path(cfg.out).parent / "plain"), checkpoint_every=0), progress=False)
    assert resumed.metrics[0].directions == plain.metrics[0].directions
    assert [r.scores for r in resumed.spl] == [r.scores for r in plain.spl]


def test_a_study_stops_on_ctrl_c_naming_its_point_and_resumes(tmp_path, monkeypatch, capsys, one_thread):
    argv = ["sweep", "--datasets", "mfeat", "--epochs", "2", "--hidden_shape", "32", "--output_shape", "16",
            "--batch_size", "200", "--device", "cpu", "--quiet", "--checkpoint_every", "1",
            "--alpha", "0", "0.1", "--out", str(tmp_path / "stopped")]
    with monkeypatch.context() as patch:
        ctrl_c_at(6 * 2 * 7 + 3, patch)   # the second point (which reuses the first's prior: RSC only)
        assert main(argv) == 130
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("drcl-fast sweep: interrupted (SIGINT) during sweep point "
                                                 "alpha=0.1_beta=0.1 (RSC on modality"), said
    assert said[0].endswith(RESUME_HINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert main([*argv, "--resume"]) == 0
    assert main([*argv[:-1], str(tmp_path / "plain")]) == 0
    csv = "sweep/sweep.csv"
    assert (tmp_path / "stopped" / csv).read_text() == (tmp_path / "plain" / csv).read_text()
