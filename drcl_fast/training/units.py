"""A run's independent units (SPL or RSC on one modality) and who trains which.

DRCL trains every modality on its own data, so the K units of a phase can run on
different ranks (torch.distributed), or at once in one process: threads sharing the
CPU's cores, or CUDA streams on one GPU. `plan` hands a rank's units out longest first
to the least loaded rank, by an expected cost (the forward products of the unit's
training rows), so that K = 5 on 4 ranks does not leave three waiting behind one. The
plan depends only on the data's shapes: every rank computes the same one, and a
resumed run finds its units where it left them. Within a process the threads take
the next unit, longest first, as each finishes one.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from drcl_fast.config import AUTO
from drcl_fast.runtime import interrupt, progress

PHASES = ("spl", "rsc")

Result = TypeVar("Result")


@dataclass(frozen=True)
class Unit:
    """One modality's SPL or RSC run."""

    phase: str    # one of PHASES
    view: int     # the modality's index
    name: str     # the modality's name
    cost: int     # expected work: the forward FLOPs of the training rows

    @property
    def label(self) -> str:
        return f"{self.phase.upper()} on modality {self.view} ({self.name})"


def plan(units: Sequence[Unit], workers: int) -> list[list[Unit]]:
    """Each worker's units, in modality order: handed out longest first to the least loaded
    worker (the lowest-numbered on a tie)."""
    if workers < 1:
        raise ValueError(f"a plan needs at least one worker, got {workers}")
    assignment: list[list[Unit]] = [[] for _ in range(workers)]
    load = [0] * workers
    for unit in sorted(units, key=lambda u: (-u.cost, u.view)):
        worker = min(range(workers), key=lambda w: (load[w], w))
        assignment[worker].append(unit)
        load[worker] += unit.cost
    return [sorted(units, key=lambda u: u.view) for units in assignment]


def makespan(assignment: Sequence[Sequence[Unit]]) -> int:
    """The plan's expected length in cost units: its most loaded worker's sum."""
    return max((sum(u.cost for u in units) for units in assignment), default=0)


def plan_lines(assignment: Sequence[Sequence[Unit]], worker_name: str = "rank") -> list[str]:
    """The plan, one line a worker, with each worker's share of the cost."""
    total = sum(u.cost for units in assignment for u in units) or 1
    lines = []
    for w, units in enumerate(assignment):
        share = sum(u.cost for u in units) / total
        what = ", ".join(f"{u.phase.upper()} {u.name}" for u in units) or "nothing (waits for the others)"
        lines.append(f"{worker_name} {w}: {what} ({share:.0%} of the cost)")
    spread = makespan(assignment) / total
    lines.append(f"predicted makespan: {spread:.0%} of the one-worker time")
    return lines


def units_at_once(setting: int | str, units: int, device: torch.device) -> tuple[int, int]:
    """(units trained at once, intra-op threads each) for a phase of `units` units.

    `setting` "auto": on the CPU, as many units as there are intra-op threads (and units),
    the threads shared out evenly; on a GPU, one, until streams at once are measured to pay off
    there (docs/history.md, "Units at once on a GPU").
    A number N: N units at once, the CPU's threads shared out among them.
    """
    threads = torch.get_num_threads()
    if setting == AUTO:
        at_once = 1 if device.type == "cuda" else max(1, min(units, threads))
    else:
        at_once = max(1, min(int(setting), units))
    if device.type == "cuda" or at_once == 1:
        return at_once, threads
    return at_once, max(1, threads // at_once)


def run_concurrently(units: Sequence[Unit], train: Callable[[Unit], Result], device: torch.device,
                     streams: int, threads: int = 1) -> dict[Unit, Result]:
    """`train(unit)` for every unit, `streams` at a time, each in its own CUDA stream on a GPU.

    Each unit's results are those of running it alone (its own seeds, its own
    stream, which waits for the work already queued); on the CPU the units share
    the cores, `threads` intra-op threads each for the duration (torch's setting
    comes back after), so that its results depend on that number alone, not on which
    units ran beside it. Each worker takes the next unit, longest first, when it is
    done with one. The first failure is raised once all running units end.

    A stop request (`interrupt`) stops every unit at its next step: no unit starts after
    it, and one `Interrupted` naming every unit that stopped is raised once all have.
    """
    with interrupt.at_step_boundaries():
        if streams <= 1 or len(units) <= 1:
            results = {}
            for unit in units:
                interrupt.check()
                results[unit] = train(unit)
            return results
        return _in_threads(units, train, device, streams, threads)


def _in_threads(units: Sequence[Unit], train: Callable[[Unit], Result], device: torch.device,
                streams: int, threads: int) -> dict[Unit, Result]:
    todo: queue.SimpleQueue[Unit] = queue.SimpleQueue()
    for unit in sorted(units, key=lambda u: (-u.cost, u.view)):
        todo.put(unit)
    results: dict[Unit, Result] = {}
    errors: list[BaseException] = []

    def worker(row: int) -> None:
        if device.type != "cuda":
            # Here too: OpenMP keeps the count per thread, and a new thread starts at the default. Not
            # put back when the thread ends: torch's setting is partly process-wide, and a thread that
            # ended first would change it under those still training; the caller's comes back after all.
            torch.set_num_threads(threads)
        progress.set_row(row)
        with _own_stream(device):
            while not errors:
                try:
                    unit = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    interrupt.check()
                    results[unit] = train(unit)
                except BaseException as error:  # raised in the caller's thread below
                    errors.append(error)
                    return

    with _intra_op_threads(device, threads):
        # Daemons, so that a kill (not a stop request: the units end that) ends the process.
        workers = [threading.Thread(target=worker, args=(w,), name=f"drcl-unit-{w}", daemon=True)
                   for w in range(min(streams, len(units)))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    failures = [error for error in errors if not isinstance(error, interrupt.Interrupted)]
    if failures:
        raise failures[0]
    if errors:   # every unit that was training stopped on request: one exception names them all
        raise errors[0].merge(errors[1:])
    return {unit: results[unit] for unit in units}


@contextlib.contextmanager
def _own_stream(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


@contextlib.contextmanager
def _intra_op_threads(device: torch.device, threads: int) -> Iterator[None]:
    if device.type == "cuda":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
