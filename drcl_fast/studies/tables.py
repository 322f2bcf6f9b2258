"""The studies' tables: CSV (full precision, for scripts) and markdown (for people), written atomically."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from drcl_fast.outputs import atomic_write

# The metrics a record holds (retrieval.report.metrics_dict's keys) and how the tables name them.
METRICS = {"map_all": "MAP@all", "map_50": "MAP@50"}


def metric_columns(record: dict) -> list[str]:
    """The CSV columns of a record's metrics: each mean, then every direction of each (`map_all:fou->fac`)."""
    means = list(METRICS)
    directions = [f"{key}:{name}" for key in METRICS for name in record["metrics"][key]["directions"]]
    return means + directions


def metric_values(record: dict) -> list[float]:
    """A record's metrics in the order of `metric_columns`."""
    metrics = record["metrics"]
    return ([metrics[key]["mean"] for key in METRICS]
            + [value for key in METRICS for value in metrics[key]["directions"].values()])


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file; floats in full (Python's shortest round-trip form), so that equal results read equal."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(header)
            out.writerows(rows)
    atomic_write(path, write)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text if text.endswith("\n") else text + "\n"))
