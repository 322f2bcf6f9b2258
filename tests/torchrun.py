"""Launch N local processes as users do: `python -m torch.distributed.run` (torchrun), loopback only.

    result = run_torchrun(["-m", "drcl_fast", "eval", "--files", a, b], nproc=2)
    result = run_torchrun(["tests/sharded_worker.py", cases, out], nproc=3)
    result = run_torchrun([...], nproc=2, check=False)   # a non-zero exit is the caller's to judge

The launch is bounded in time: past `timeout` torchrun and every worker it started are
killed and the test fails with what they printed. Collectives time out sooner
(DRCL_FAST_COLLECTIVE_TIMEOUT), so a rank that died ends the others.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the rendezvous takes it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The workers' environment: one thread each, loopback sockets, short collective timeouts."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "DRCL_FAST_COLLECTIVE_TIMEOUT": "60", "PYTHONUNBUFFERED": "1"})
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    env.update(extra or {})
    return env


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; elsewhere none are found)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _kill(process: subprocess.Popen) -> None:
    """End torchrun and its workers, which torchrun starts in sessions of their own."""
    workers = _descendants(process.pid)
    os.killpg(process.pid, signal.SIGTERM)  # torchrun's agent then stops its workers itself
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    for pid in workers:  # any the agent did not stop
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def torchrun_command(args: list[str], nproc: int, extra: list[str] | None = None) -> list[str]:
    """The torchrun command line: `nproc` local ranks meeting on a free loopback port, then `args`.

    Args:
        args: a script path and its arguments, or ["-m", "module", ...].
        nproc: processes (ranks) to start.
        extra: more torchrun flags (e.g. ["--max-restarts", "1"]), placed before `args`.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            # The agent tells the workers to meet at this address; by default it is the host's name.
            "--local-addr", "127.0.0.1", *(extra or []), *map(str, args)]


def run_torchrun(args: list[str], nproc: int, timeout: float = 120.0, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, *, check: bool = True,
                 extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `torchrun --nproc_per_node nproc ARGS` on this machine and wait for it.

    Args:
        args: what follows torchrun's own flags: a script path and its arguments, or
            ["-m", "module", ...] to run a module.
        nproc: processes (ranks) to start.
        timeout: seconds before the launch is killed and the test fails.
        env: variables added to (or replacing) the workers' environment.
        cwd: the working directory (default: the repository root).
        check: fail the test, with the output, when torchrun exits with a non-zero status.
        extra: more torchrun flags, as for `torchrun_command`.

    Returns:
        The CompletedProcess, stdout and stderr captured as text.
    """
    command = torchrun_command(args, nproc, extra)
    # A session of its own, so that a timeout can kill torchrun and every worker it started.
    process = subprocess.Popen(command, cwd=cwd or REPO, env=torchrun_env(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun {' '.join(map(str, args))} ran past {timeout} s and was killed\n"
                    f"--- stdout\n{stdout}\n--- stderr\n{stderr}")
    if check and process.returncode != 0:
        pytest.fail(f"torchrun {' '.join(map(str, args))} exited with status {process.returncode}\n"
                    f"--- stdout\n{stdout}\n--- stderr\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
