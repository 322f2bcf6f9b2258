"""Nothing lost on interruption: kill -9 at arbitrary points, resume, same result."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch

from drcl_fast.errors import CheckpointError, NonFiniteLossError
from drcl_fast.training import rsc
from drcl_fast.training.checkpoint import Checkpointer
from drcl_fast.training.trainer import fit
from tests.support import REPO

TRAIN = [sys.executable, "-m", "drcl_fast", "train", "--datasets", "mfeat", "--epochs", "5", "--hidden_shape", "48",
         "--output_shape", "16", "--batch_size", "200", "--device", "cpu", "--checkpoint_every", "1", "--quiet"]


def epoch_lines(log: Path) -> int:
    if not log.is_file():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines() if " epoch " in line and "/5:" in line)


def start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*TRAIN, "--out", str(out), *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run([*TRAIN, "--out", str(reference)], cwd=REPO, check=True, capture_output=True)

    out, log = tmp_path / "killed", tmp_path / "killed" / "logging" / "mfeat.log"
    rng = random.Random(0)
    kills, finished = 0, None
    # 60 epochs in all (6 SPL + 6 RSC units x 5); each life gets this many new epoch lines, then a kill
    # a random fraction of an epoch later: mid-epoch, mid-checkpoint, mid-output, wherever it lands.
    for lifetime in (4, 11, 19, 23, 1000):
        seen = epoch_lines(log)
        proc = start(out, "--resume")
        deadline = time.monotonic() + 120
        while proc.poll() is None and epoch_lines(log) < seen + lifetime and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None:
            finished = proc
            break
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 3, "the run finished before it could be killed at several points"
    if finished is None:
        finished = start(out, "--resume")
    _, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err

    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    for k in range(6):
        a = sio.loadmat(out / "features" / f"mfeat_{k}.mat")
        b = sio.loadmat(reference / "features" / f"mfeat_{k}.mat")
        for key in ("test_fea", "test_pred"):
            np.testing.assert_array_equal(a[key], b[key])
    assert not list((out / "checkpoints").glob("*.pt"))    # removed once the run completed


def fit_interrupted(data, cfg, stop, monkeypatch) -> None:
    """fit(data, cfg) with a Ctrl-C raised in the RSC batch step or validation for which stop() is first
    true: one call a batch, whichever step runs it (autograd, Python or C++), and one a validation."""
    def interrupting(real):
        def interrupted(*args, **kwargs):
            if stop():
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return interrupted

    with monkeypatch.context() as patch:
        patch.setattr(rsc.RSCStep, "__call__", interrupting(rsc.RSCStep.__call__))
        patch.setattr(rsc, "validation_loss", interrupting(rsc.validation_loss))
        with pytest.raises(KeyboardInterrupt):
            fit(data, cfg, progress=False)


def test_checkpoint_loads_with_weights_only_and_refuses_other_settings(mfeat, tiny_config, monkeypatch):
    cfg = tiny_config.replace(checkpoint_every=1, concurrent_units=1)   # the units in order: the calls count
    calls = []

    def stop() -> bool:  # a Ctrl-C in the third RSC epoch (7 batches + 1 validation each)
        calls.append(1)
        return len(calls) > 2 * 8 + 3

    fit_interrupted(mfeat, cfg, stop, monkeypatch)

    folder = Path(cfg.out) / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["mfeat.rsc0.pt"] + [f"mfeat.spl{k}.pt" for k in range(6)]
    spl = [torch.load(folder / f"mfeat.spl{k}.pt", weights_only=True) for k in range(6)]
    assert all(record["done"] and record["result"]["scores"] for record in spl)
    unit = torch.load(folder / "mfeat.rsc0.pt", weights_only=True)
    assert (unit["phase"], unit["view"], unit["done"], unit["progress"]["epoch"]) == ("rsc", 0, False, 2)
    with pytest.raises(CheckpointError, match="other settings"):
        fit(mfeat, cfg.replace(resume=True, alpha=0.2), progress=False)
    resumed = fit(mfeat, cfg.replace(resume=True), progress=False)
    plain = fit(mfeat, tiny_config.replace(out=str(Path(cfg.out).parent / "plain"), checkpoint_every=0,
                                           concurrent_units=1), progress=False)
    assert resumed.metrics[0].directions == plain.metrics[0].directions
    assert [r.scores for r in resumed.spl] == [r.scores for r in plain.spl]


def test_non_finite_loss_stops_naming_epoch_and_term_and_keeps_the_checkpoint(mfeat, tiny_config, monkeypatch):
    cfg = tiny_config.replace(prior="w0", checkpoint_every=1, concurrent_units=1)  # the first modality first
    real = rsc.RSCStep.__call__

    def poisoned(step, x, targets, permutation, q):
        loss, (j_l, j_d, j_mse) = real(step, x, targets, permutation, q)
        if q >= 0.03:                                      # the third epoch of the first modality
            j_d = j_d * float("nan")
        return loss, (j_l, j_d, j_mse)

    monkeypatch.setattr(rsc.RSCStep, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"'fou', epoch 3: non-finite J_D at batch 1;") as err:
        fit(mfeat, cfg, progress=False)
    assert "rsc modality 0, epoch 2" in str(err.value)
    unit = torch.load(Path(cfg.out) / "checkpoints" / "mfeat.rsc0.pt", weights_only=True)
    assert unit["progress"]["epoch"] == 2
    assert all(torch.isfinite(p).all() for p in unit["progress"]["encoder"].values())


def test_units_interrupted_at_once_resume_where_each_left_off(mfeat, tiny_config, monkeypatch):
    """Two RSC units train at once when one fails mid-epoch: the other ends its unit, and the resumed run
    finishes both as an uninterrupted run with the same units at once."""
    cfg = tiny_config.replace(checkpoint_every=1, concurrent_units=2)
    calls, first = threading.local(), threading.Lock()

    def stop() -> bool:  # the twelfth call of a thread is in its unit's second epoch (7 batches + 1 validation each)
        calls.count = getattr(calls, "count", 0) + 1
        return calls.count == 12 and first.acquire(blocking=False)

    fit_interrupted(mfeat, cfg, stop, monkeypatch)
    records = [torch.load(p, weights_only=True) for p in (Path(cfg.out) / "checkpoints").glob("mfeat.rsc*.pt")]
    assert sorted(r["done"] for r in records) == [False, True]     # one unit part-way, the other finished
    assert [r["progress"]["epoch"] for r in records if not r["done"]] == [1]
    resumed = fit(mfeat, cfg.replace(resume=True), progress=False)
    plain = fit(mfeat, cfg.replace(out=str(Path(cfg.out).parent / "plain"), checkpoint_every=0), progress=False)
    assert resumed.metrics[0].directions == plain.metrics[0].directions
    weights = Path("model") / "weights.safetensors"   # the resumed run writes the uninterrupted run's model
    assert (Path(cfg.out) / weights).read_bytes() == (Path(cfg.out).parent / "plain" / weights).read_bytes()
    for k in plain.rsc:
        np.testing.assert_array_equal(resumed.rsc[k].test_embeddings, plain.rsc[k].test_embeddings)


def test_removing_checkpoints_survives_the_folder_going_away_while_listed(tmp_path, monkeypatch):
    """Under torchrun every rank removes the run's checkpoints at the end; the folder can vanish (another
    rank's rmdir) while this one lists it, and the listing then raises FileNotFoundError mid-scan."""
    checkpointer = Checkpointer(tmp_path, "mfeat", -1, 1, {"seed": 1})

    def vanished(self, pattern):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "glob", vanished)
    assert checkpointer.saved_paths() == []
    checkpointer.remove()
