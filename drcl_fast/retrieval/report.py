"""Cross-modal retrieval results (MAP, and the metrics of retrieval/metrics.py) and the ways they are
printed or saved."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DirectionResult:
    """One metric (MAP at one k unless `title` says otherwise) of every ordered (query modality,
    gallery modality) pair."""

    names: tuple[str, ...]
    k: int | None  # None is MAP@all
    matrix: np.ndarray  # (K, K) float64, [query, gallery], NaN on the diagonal
    mean: float  # over the K(K-1) directions
    directions: dict[str, float]  # "query->gallery", query-major order
    title: str = ""  # the metric as printed, e.g. "P@10" ("": MAP at k)
    key: str = ""  # the metric's metrics.json key, e.g. "precision_10" ("": MAP's map_all, map_50, ...)


def _title(result: DirectionResult) -> str:
    return result.title or ("MAP@all" if result.k is None else f"MAP@{result.k}")


def _key(result: DirectionResult) -> str:
    return result.key or ("map_all" if result.k is None else f"map_{result.k}")


def result_line(result: DirectionResult) -> str:
    """The released code's log line, byte for byte (trailing comma included).

    The caller prefixes "test resutls@all:" or "test resutls@50:".
    """
    return (' - mean: %.5f - detail:' % result.mean
            + ''.join('%.5f,' % value for value in result.directions.values()))


def format_table(results: list[DirectionResult]) -> str:
    """One block per k (per metric): rows are query modalities, columns gallery modalities."""
    blocks = []
    for result in results:
        corner = "query \\ gallery"
        width = max(len(corner), *(len(name) for name in result.names))
        rows = [["—" if i == j else f"{value:.5f}" for j, value in enumerate(result.matrix[i])]
                for i in range(len(result.names))]
        # Values past 9.99999 (an rsum, in percent) are wider than a MAP's.
        cell = max(7, *(len(name) for name in result.names), *(len(c) for row in rows for c in row))
        lines = [f"{_title(result)}  (mean {result.mean:.5f})",
                 corner.ljust(width) + "".join(f"  {name:>{cell}}" for name in result.names)]
        for name, cells in zip(result.names, rows):
            lines.append(name.ljust(width) + "".join(f"  {c:>{cell}}" for c in cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def metrics_dict(results: list[DirectionResult]) -> dict[str, dict]:
    """JSON-ready {"map_all": {"mean": x, "directions": {...}}, "map_50": ...}, other metrics under their `key`."""
    out: dict[str, dict] = {}
    for result in results:
        key = _key(result)
        if key in out:
            raise ValueError(f"two results for {_title(result)}; pass one result per k and metric")
        out[key] = {"mean": float(result.mean),
                    "directions": {name: float(v) for name, v in result.directions.items()}}
    return out
