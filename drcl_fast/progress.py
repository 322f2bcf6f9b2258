"""Progress bars that stay out of the way of scripts (quiet mode, no TTY noise)."""
from __future__ import annotations

from tqdm.auto import tqdm


def epoch_bar(epochs: int, description: str, enabled: bool) -> tqdm:
    return tqdm(range(epochs), desc=description, unit="epoch", disable=not enabled,
                leave=False, dynamic_ncols=True)
