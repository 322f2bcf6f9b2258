"""Progress bars that stay out of the way of scripts (quiet mode, no TTY noise)."""
from __future__ import annotations

import threading

from tqdm.auto import tqdm

_row = threading.local()   # the console row of this thread's bars: units trained at once keep apart


def set_row(row: int) -> None:
    """Put the calling thread's bars on console row `row` (0, the default, is the first)."""
    _row.value = row


def epoch_bar(epochs: int, description: str, enabled: bool, start: int = 0) -> tqdm:
    """Epochs start..epochs-1, shown out of `epochs` (a resumed run starts part-way)."""
    return tqdm(range(start, epochs), desc=description, unit="epoch", disable=not enabled,
                initial=start, total=epochs, leave=False, dynamic_ncols=True, position=getattr(_row, "value", 0))
