"""Progress bars that stay out of the way of scripts (quiet mode, no TTY noise)."""
from __future__ import annotations

from tqdm.auto import tqdm


def epoch_bar(epochs: int, description: str, enabled: bool, start: int = 0) -> tqdm:
    """Epochs start..epochs-1, shown out of `epochs` (a resumed run starts part-way)."""
    return tqdm(range(start, epochs), desc=description, unit="epoch", disable=not enabled,
                initial=start, total=epochs, leave=False, dynamic_ncols=True)
