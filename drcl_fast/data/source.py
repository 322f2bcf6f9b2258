"""Where each array of a data set was read from, so that errors name what the user edits.

A reader records, for every features and labels array, the file and its key (a
MATLAB cell as `key{i}`, 1-based as MATLAB counts), and which rows it took when
it cut one array into two splits. MultiModalData's checks word their errors with
these; arrays built in memory have no source and are named by split and modality.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass(frozen=True)
class Source:
    """One array's origin: `key` in `path`, and the part of it used (e.g. "rows 232-240")."""

    path: Path
    key: str
    rows: str = ""

    def __str__(self) -> str:
        return f"`{self.key}`" + (f" {self.rows}" if self.rows else "")

    def part(self, rows: str) -> "Source":
        return dataclasses.replace(self, rows=rows)


class Sources(NamedTuple):
    """The origins of one modality's features and labels in one split."""

    features: Source
    labels: Source


def cell_key(key: str, index: int) -> str:
    """How MATLAB names cell `index` (0-based here) of cell array `key`: `key{index + 1}`."""
    return f"{key}{{{index + 1}}}"
