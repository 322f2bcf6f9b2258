"""Progress bars that stay out of the way of scripts: drawn on a terminal only.

tqdm redraws a bar with carriage returns; in a log file, a CI log or a notebook's captured
output those redraws pile up as fragments (two units' bars at once interleave into more
than a thousand on the demo). So a bar is drawn only where its stream, standard error, is a
terminal; elsewhere the run's own log lines (a start and an end line per unit and phase,
with its time) say how it goes.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Iterable

from tqdm.auto import tqdm

_row = threading.local()   # the console row of this thread's bars: units trained at once keep apart


def on_terminal(stream: Any = None) -> bool:
    """Whether `stream` (default: standard error, where the bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def bars(enabled: bool) -> bool:
    """Whether to draw a bar that its caller would show: `enabled`, and only on a terminal."""
    return enabled and on_terminal()


def set_row(row: int) -> None:
    """Put the calling thread's bars on console row `row` (0, the default, is the first)."""
    _row.value = row


def epoch_bar(epochs: int, description: str, enabled: bool, start: int = 0) -> tqdm:
    """Epochs start..epochs-1, shown out of `epochs` (a resumed run starts part-way); a bar only
    when `enabled` and on a terminal, else a silent tqdm (its set_postfix does nothing)."""
    return tqdm(range(start, epochs), desc=description, unit="epoch", disable=not bars(enabled),
                initial=start, total=epochs, leave=False, dynamic_ncols=True, position=getattr(_row, "value", 0))


def item_bar(items: Iterable, description: str, enabled: bool, **options: Any) -> tqdm:
    """A bar over `items` (MAP's directions, a study's points) with the same rule as epoch_bar."""
    return tqdm(items, desc=description, disable=not bars(enabled), **options)
