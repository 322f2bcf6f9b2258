"""What the tests share: the repository's path, the CLI's clean failure, the kernel tests' numerics, torchrun.

Kernel numerics. Shared by the kernel tests: the tolerance rule, the device, fresh inputs.

Tolerance rule (docs/design.md section 7, flash-attention's): against a float64
reference, a fast path's relative error ||out - ref|| / ||ref|| may be at most
twice PyTorch's own float32 error on the same inputs, plus two float32 epsilons:
on a scalar such as J_D, PyTorch's error is sometimes far below one rounding by
luck, and a different but equally sound order of float32 operations lands
within about one epsilon; the floor keeps the bar at what float32 can promise.
The same rule holds element by element, so that one wrong tile (at a partial edge,
say) is not diluted by a whole tensor's norm: max |out - ref| at most ELEMENT_FACTOR
times PyTorch's own largest float32 error, plus two float32 epsilons of the
tensor's largest magnitude (of 1 where the reference is all zeros). float64 runs must match to 1e-10.

torchrun. Launch N local processes as users do: `python -m torch.distributed.run` (torchrun), loopback only.

    result = run_torchrun(["-m", "drcl_fast", "eval", "--files", a, b], nproc=2)
    result = run_torchrun(["tests/retrieval/sharded_worker.py", cases, out], nproc=3)
    result = run_torchrun([...], nproc=2, check=False)   # a non-zero exit is the caller's to judge

The launch is bounded in time: past `timeout` torchrun and every worker it started are
killed and the test fails with what they printed. Collectives time out sooner
(DRCL_FAST_COLLECTIVE_TIMEOUT), so a rank that died ends the others.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fails_with(argv: list[str], capsys) -> str:
    """Run `drcl-fast ARGV` expecting a clean error: exit status 2, a line `drcl-fast COMMAND: error: ...` (after
    the usage where argparse finds the fault), no traceback. Returns what was printed, on one line."""
    from drcl_fast.cli import main
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"^drcl-fast {argv[0]}: error: ", err, re.M) and "Traceback" not in err, err
    return " ".join(err.split())


# Kernel numerics
EPS32 = torch.finfo(torch.float32).eps
ELEMENT_FACTOR = 4.0   # the largest of many roundings varies more than their norm: measured up to 1.9x here
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # the Triton interpreter runs CPU tensors

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    scale = ref.norm()
    return float((out - ref).norm() / scale) if scale > 0 else float((out - ref).norm())


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref.double().cpu()).abs().max())


def assert_within_rule(fast: list[torch.Tensor], torch32: list[torch.Tensor], ref64: list[torch.Tensor],
                       names: list[str]) -> None:
    """Every output of a float32 fast path against the rule above, as a whole and element by element."""
    for name, f, p, r in zip(names, fast, torch32, ref64):
        bound = 2 * rel_err(p, r) + 2 * EPS32
        assert rel_err(f, r) <= bound, f"{name}: error {rel_err(f, r):.3g} > {bound:.3g} (torch {rel_err(p, r):.3g})"
        assert_elementwise_within_rule(name, f, p, r)


def assert_elementwise_within_rule(name: str, fast: torch.Tensor, torch32: torch.Tensor, ref64: torch.Tensor) -> None:
    """max |fast - ref| <= ELEMENT_FACTOR * max |torch32 - ref| + 2 eps32 max |ref| (2 eps32 where ref is all
    zeros, as rel_err turns absolute there), naming the worst element."""
    errors = (fast.double().cpu() - ref64.double().cpu()).abs()
    scale = float(ref64.abs().max())
    bound = ELEMENT_FACTOR * max_abs_err(torch32, ref64) + 2 * EPS32 * (scale if scale > 0 else 1.0)
    worst = tuple(int(i) for i in np.unravel_index(int(errors.argmax()), errors.shape))
    assert errors.max() <= bound, (f"{name}: element {worst} off by {float(errors.max()):.3g} > {bound:.3g} "
                                   f"(torch's largest error {max_abs_err(torch32, ref64):.3g})")


def assert_float64_equal(fast: list[torch.Tensor], ref64: list[torch.Tensor], names: list[str]) -> None:
    for name, f, r in zip(names, fast, ref64):
        assert rel_err(f, r) <= 1e-10, f"{name}: float64 error {rel_err(f, r):.3g}"


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# torchrun


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
