"""Training under torchrun (gloo, loopback): the units spread over ranks, the files of one process.

Every launch is a real `torchrun` of `drcl-fast train`, as users start it, bounded in time.
Ranks and the single process all run one intra-op thread (torchrun's default), because
CPU matrix products round differently with another thread count.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO, run_torchrun, torchrun_command, torchrun_env

WORKER = str(REPO / "tests" / "training" / "train_rank.py")
EPOCHS = 4
# torchrun shares its rendezvous store with the workers' process group by default, and a restarted
# group then reads the dead one's addresses (pytorch/pytorch#135712): the documented workaround.
ELASTIC_RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
TRAIN = ["train", "--datasets", "mfeat", "--epochs", str(EPOCHS), "--hidden_shape", "48", "--output_shape", "16",
         "--batch_size", "200", "--device", "cpu", "--quiet"]


def output_files(out: Path) -> dict[str, bytes]:
    """Every file a run leaves for its user (the released layout, metrics.json and the model folder), by path."""
    files = [*sorted((out / "PriorW").glob("*.mat")), *sorted((out / "features").glob("*.mat")),
             out / "metrics.json", out / "model" / "manifest.json", out / "model" / "weights.safetensors"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("single") / "run"
    subprocess.run([sys.executable, "-m", "drcl_fast", *TRAIN, "--out", str(out)], cwd=REPO, check=True,
                   capture_output=True, env=torchrun_env(), timeout=300)
    files = output_files(out)
    assert len(files) == 7 + 6 + 1 + 2
    return files


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_write_the_files_of_one_process_byte_for_byte(single_process, tmp_path, ranks):
    out = tmp_path / "run"
    run = run_torchrun([WORKER, *TRAIN, "--out", str(out)], nproc=ranks, cwd=REPO)
    assert output_files(out) == single_process
    log = (out / "logging" / "mfeat.log").read_text()
    assert f"torch.distributed: {ranks} ranks (gloo)" in log
    plan = [line.split("RSC plan: ")[1] for line in log.splitlines() if "RSC plan: rank" in line]
    assert len(plan) == ranks and all("% of the cost" in line for line in plan)
    assert all((out / "logging" / f"mfeat.rank{r}.log").is_file() for r in range(1, ranks))
    assert not list((out / "checkpoints").glob("*.pt"))
    assert "test resutls@all" in run.stdout and run.stdout.count("test resutls@all") == 1   # rank 0 reports


def test_a_rank_without_a_unit_waits_says_so_and_ends_cleanly(tmp_path):
    out = tmp_path / "run"
    run_torchrun([WORKER, *TRAIN, "--prior", "w0", "--view_id", "1", "--out", str(out)], nproc=2, cwd=REPO)
    assert (out / "features" / "mfeat_1.mat").is_file()
    assert "rank 1 has no RSC unit: waiting for the others" in (out / "logging" / "mfeat.rank1.log").read_text()


def test_a_failing_rank_ends_the_job_naming_the_rank_and_the_unit(tmp_path):
    # The plan puts fac (the second-largest unit) alone on rank 1.
    started = time.monotonic()
    run = run_torchrun([WORKER, *TRAIN, "--out", str(tmp_path / "run")], nproc=2, cwd=REPO, check=False,
                       env={"DRCL_TEST_FAIL_NAME": "fac"})
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "[rank 1] rank 1 stopped in RSC on modality 1 (fac)" in output
    assert "injected failure in RSC of fac" in output
    assert time.monotonic() - started < 120


def test_an_elastic_restart_resumes_from_the_unit_checkpoints(single_process, tmp_path):
    out = tmp_path / "run"
    run_torchrun([WORKER, *TRAIN, "--out", str(out), "--resume", "--checkpoint_every", "1"], nproc=2, cwd=REPO,
                 extra=["--max-restarts", "1"], env={"DRCL_TEST_FAIL_NAME": "fac", "DRCL_TEST_FAIL_ONCE": "1",
                                                     **ELASTIC_RESTART_ENV})
    assert output_files(out) == single_process
    log = (out / "logging" / "mfeat.log").read_text()
    resumed = re.search(r"resuming from the (\d+) unit checkpoint", log)   # the six SPL units at least
    assert resumed and int(resumed.group(1)) >= 6, log


def epoch_lines(out: Path) -> int:
    logs = (out / "logging").glob("mfeat*.log") if (out / "logging").is_dir() else []
    return sum(text.count(f"/{EPOCHS}:") for text in (p.read_text(errors="replace") for p in logs))


def test_a_killed_job_resumes_to_the_uninterrupted_files(single_process, tmp_path):
    out = tmp_path / "run"
    args = [WORKER, *TRAIN, "--out", str(out), "--checkpoint_every", "1"]
    # 48 epochs in all (12 units x 4): kill the whole job, torchrun and ranks, a third of the way in.
    job = subprocess.Popen(torchrun_command(args, nproc=2), cwd=REPO, env=torchrun_env(), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while job.poll() is None and epoch_lines(out) < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert list((out / "checkpoints").glob("mfeat.*.pt"))
    run_torchrun([*args, "--resume"], nproc=2, cwd=REPO)
    assert output_files(out) == single_process
