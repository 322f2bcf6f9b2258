"""Stopping a run on request: Ctrl-C (SIGINT) or SIGTERM, as a scheduler or `timeout` sends.

The first signal asks every unit that is training to stop: each looks at the request
before every step (an `Event.is_set()`), saves its checkpoint there (mid-epoch: the
state before the epoch's draws, the batch reached and the epoch's sums so far, so that
`--resume` continues bit for bit) and raises `Interrupted`; the threads of units
trained at once end the same way, and the caller gets one `Interrupted` naming every
unit that stopped. Outside the units (loading data, between phases, evaluating) the
signal raises `Interrupted` at once, as Ctrl-C raises KeyboardInterrupt.

A second signal while the run stops ends the process at once (`os._exit`): every
checkpoint is written to a temporary name and renamed, so the last one whole stays.

`drcl-fast` installs the handlers for the duration of a command (`on_signals`) and
exits 130 after SIGINT, 143 after SIGTERM, printing `Interrupted`'s one line; `fit`
installs the SIGINT one where Python's default is in place, so that the API stops the
same way (`Interrupted` is a KeyboardInterrupt).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stop = threading.Event()            # a stop was asked for
_signal = signal.SIGINT              # by which signal
_lock = threading.Lock()
_at_steps = 0                        # > 0 while units train: they stop at their next step
_installed = 0                       # > 0 while this module's handlers are in place
_stage = "start-up"                  # what a run does when no unit trains, for the message


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(KeyboardInterrupt):
    """The run stopped on request (a signal); the units that were training saved their checkpoints.

    Attributes:
        signum: the signal that asked to stop.
        units: the units that were training and stopped (`units.Unit`s), in modality order.
        stage: what the run was doing, where no unit was training.
        point: the study's point that was training, if any.
        saved: where the run's checkpoints are, or why there are none.
        resumable: whether `--resume` continues the run.
    """

    def __init__(self, signum: int = signal.SIGINT, stage: str | None = None) -> None:
        super().__init__()
        self.signum = int(signum)
        self.units: list[Any] = []
        self.stage = stage
        self.point: str | None = None
        self.saved: str | None = None
        self.resumable = False

    def merge(self, others: Sequence["Interrupted"]) -> "Interrupted":
        """This one, with the units the others (raised in other threads) stopped."""
        for other in others:
            self.units += [u for u in other.units if u not in self.units]
        self.units.sort(key=lambda u: (u.phase, u.view))
        return self

    def note_checkpoints(self, folder: Path, enabled: bool, saved: Sequence[Path]) -> None:
        """Say where the run's checkpoints are (first caller only: the innermost run knows)."""
        if self.saved is not None:
            return
        if not enabled:
            self.saved = "checkpoints are off (--checkpoint_every 0), so nothing can be resumed"
        elif not saved:
            self.saved = "no checkpoint was written yet, so nothing can be resumed"
        else:
            self.saved, self.resumable = f"checkpoints in {folder}", True

    @property
    def where(self) -> str:
        if self.units:
            by_phase: dict[str, list[Any]] = {}
            for unit in self.units:
                by_phase.setdefault(unit.phase, []).append(unit)
            where = "; ".join(
                f"{phase.upper()} on modalit{'y' if len(units) == 1 else 'ies'} "
                + ", ".join(f"{u.view} ({u.name})" for u in units) for phase, units in by_phase.items())
        else:
            where = self.stage or "start-up"
        return f"{self.point} ({where})" if self.point else where

    def __str__(self) -> str:
        line = f"interrupted ({signal_name(self.signum)}) during {self.where}"
        if self.saved:
            line += f"; {self.saved}"
        if self.resumable:
            line += "; run the same command with --resume to continue"
        return line


def requested() -> bool:
    """Whether a stop was asked for: what a unit looks at before each step."""
    return _stop.is_set()


def check() -> None:
    """Raise `Interrupted` if a stop was asked for."""
    if _stop.is_set():
        raise Interrupted(_signal, _stage)


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Within: the run does `what` (outside its units), for the message of an interruption there."""
    global _stage
    before, _stage = _stage, what
    try:
        yield
    finally:
        _stage = before


@contextlib.contextmanager
def at_step_boundaries() -> Iterator[None]:
    """Within: units train, and a signal waits for them to stop at their next step (instead of
    raising wherever the main thread is, possibly while the units' threads are inside C++).
    A stop asked for while the last units ended is raised on the way out."""
    global _at_steps
    with _lock:
        _at_steps += 1
    try:
        yield
    finally:
        with _lock:
            _at_steps -= 1
    check()


def _handler(signum: int, frame: Any) -> None:
    global _signal
    if _stop.is_set():
        os.write(2, f"drcl-fast: {signal_name(signum)} again: stopped at once; the checkpoints "
                    f"written before are whole\n".encode())
        os._exit(exit_status(signum))
    _signal = signum
    _stop.set()
    if _at_steps == 0:   # no unit is training: stop here, as Ctrl-C would
        raise Interrupted(signum, _stage)


@contextlib.contextmanager
def on_signals(signals: Sequence[int] = STOP_SIGNALS, only_over_default: bool = False) -> Iterator[None]:
    """Within: `signals` stop the run (first: every unit at its next step; second: at once).

    The previous handlers come back after, and a stop request is forgotten. Nothing
    happens outside the main thread (where Python cannot set handlers) or inside an
    enclosing `on_signals`. `only_over_default`: replace only Python's default SIGINT
    handler (for the API: a program's own handler is left alone).
    """
    global _installed, _signal
    if threading.current_thread() is not threading.main_thread() or _installed:
        yield
        return
    previous = {}
    for signum in signals:
        current = signal.getsignal(signum)
        if only_over_default and current is not signal.default_int_handler:
            continue
        previous[signum] = current
    if not previous:
        yield
        return
    for signum in previous:
        signal.signal(signum, _handler)
    _installed += 1
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _installed -= 1
        _stop.clear()
        _signal = signal.SIGINT
