"""The process group a run spreads over, with torch.distributed (launched by torchrun).

A process that torchrun started (its environment names RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR) joins the group with `process_group()`; anything
else runs alone, as before. Collectives time out (`COLLECTIVE_TIMEOUT`), so
that a rank that died takes the job down instead of leaving the others waiting.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from typing import Any, Iterator

import torch
import torch.distributed as dist

from drcl_fast.errors import ConfigError

log = logging.getLogger("drcl_fast")

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "DRCL_FAST_COLLECTIVE_TIMEOUT"   # seconds
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
WAIT_REPORT_S = 60.0   # how often a rank waiting for the others says so


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher) with others."""
    return all(name in os.environ for name in TORCHRUN_ENV)


_alone = 0   # > 0 inside alone(): this process's work is its own


def active() -> bool:
    """Whether a process group of more than one rank is initialised (and not set aside by `alone()`)."""
    return _alone == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within: this process works as if on its own, even in a group; for work that is
    already split over the ranks (one point of a study, say), so that its run trains
    every unit itself and writes its own files."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def launched_rank() -> int:
    """The rank torchrun gave this process (whether or not its group is joined yet)."""
    return int(os.environ.get("RANK", "0"))


def backend_name() -> str:
    return str(dist.get_backend()) if active() else "none"


def is_main() -> bool:
    """Rank 0, or a process on its own: the one that writes files and prints results."""
    return rank() == 0


def collective_timeout() -> datetime.timedelta:
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return COLLECTIVE_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r}: give the collectives' timeout in seconds, a positive number")
    return datetime.timedelta(seconds=seconds)


def rank_device(requested: str) -> str:
    """The device this rank trains on: cuda:LOCAL_RANK where GPUs exist ('auto' or 'cuda'), else as asked."""
    if not active() or requested not in ("auto", "cuda") or not torch.cuda.is_available():
        return requested
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise ConfigError(f"rank {rank()} has LOCAL_RANK {local} but this machine has "
                          f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
    return f"cuda:{local}"


@contextlib.contextmanager
def process_group() -> Iterator[bool]:
    """Join torchrun's group for the duration (yields whether there is one of several ranks).

    Does nothing when the process was not started by torchrun or a group already
    exists (the caller's, which it leaves as it is); a group it creates it destroys.
    NCCL where this process has a GPU, else gloo.
    """
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        yield active()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=collective_timeout())
    try:
        yield active()
    finally:
        dist.destroy_process_group()


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; [value] when alone."""
    if not active():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_to_main(value: Any) -> list[Any]:
    """Every rank's `value` (picklable) on rank 0, in rank order; elsewhere just [value]."""
    if not active():
        return [value]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered if is_main() else [value]


def wait_for_all(what: str) -> None:
    """Return once every rank has called this with the same `what` (a phase boundary).

    Ranks finish their units at different times, often further apart than a
    collective's timeout allows: so they meet through the group's key-value store,
    polled, saying every minute who is still missing. A rank that died ends the
    job through torchrun, which stops the others.
    """
    if not active():
        return
    # Keys are per restart: torchrun's elastic restarts keep the store.
    key = f"drcl_fast/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{what}"
    store = dist.distributed_c10d._get_default_store()
    store.add(key, 1)
    store.set(f"{key}/{rank()}", "1")
    pause, said = 0.01, time.monotonic()
    while int(store.add(key, 0)) < world_size():
        time.sleep(pause)
        pause = min(2 * pause, 1.0)
        if time.monotonic() - said >= WAIT_REPORT_S:
            missing = [r for r in range(world_size()) if not store.check([f"{key}/{r}"])]
            log.info("rank %d: waiting for rank(s) %s to finish (%s)", rank(), missing, what)
            said = time.monotonic()
    # Everyone has arrived; a collective (quick now) makes sure everyone has also stopped polling,
    # since rank 0 may host the store and leave right after.
    dist.barrier()
