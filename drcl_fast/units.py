"""A run's independent units (SPL or RSC on one modality) and who trains which.

DRCL trains every modality on its own data, so the K units of a phase can run on
different ranks (torch.distributed) or at once on one GPU. `plan` hands them out
longest first to the least loaded worker, by an expected cost (training rows times
input width, what the first layer's products scale with), so that K = 5 on 4 ranks
does not leave three waiting behind one. The plan depends only on the data's
shapes: every rank computes the same one, and a resumed run finds its units where
it left them.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch

PHASES = ("spl", "rsc")

Result = TypeVar("Result")


@dataclass(frozen=True)
class Unit:
    """One modality's SPL or RSC run."""

    phase: str    # one of PHASES
    view: int     # the modality's index
    name: str     # the modality's name
    cost: int     # expected work: training rows x input width

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


def run_concurrently(units: Sequence[Unit], train: Callable[[Unit], Result], device: torch.device,
                     streams: int) -> dict[Unit, Result]:
    """`train(unit)` for every unit, `streams` at a time, each in its own CUDA stream on a GPU.

    Each unit's results are those of running it alone (its own seeds, its own
    stream, which waits for the work already queued); on the CPU the threads share
    the cores, each with one intra-op thread for the duration (torch's setting
    comes back after). The first failure is raised once all running units end.
    """
    if streams <= 1 or len(units) <= 1:
        return {unit: train(unit) for unit in units}
    pending = list(plan(units, min(streams, len(units))))
    results: dict[Unit, Result] = {}
    errors: list[BaseException] = []

    def worker(mine: list[Unit]) -> None:
        if device.type != "cuda":
            # Here too: OpenMP keeps the count per thread, and a new thread starts at the default. Not
            # put back when the thread ends: torch's setting is partly process-wide, and a thread that
            # ended first would change it under those still training; the caller's comes back after all.
            torch.set_num_threads(1)
        with _own_stream(device):
            for unit in mine:
                if errors:
                    return
                try:
                    results[unit] = train(unit)
                except BaseException as error:  # raised in the caller's thread below
                    errors.append(error)
                    return

    with _one_intra_op_thread(device):
        # Daemons, so that a Ctrl-C ends the process: each unit's checkpoint keeps its progress.
        threads = [threading.Thread(target=worker, args=(mine,), name=f"drcl-unit-{w}", daemon=True)
                   for w, mine in enumerate(pending)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
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
def _one_intra_op_thread(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
