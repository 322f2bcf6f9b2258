"""Cross-modal MAP results and the ways they are printed or saved."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DirectionResult:
    """MAP of every ordered (query modality, gallery modality) pair at one k."""

    names: tuple[str, ...]
    k: int | None  # None is MAP@all
    matrix: np.ndarray  # (K, K) float64, [query, gallery], NaN on the diagonal
    mean: float  # over the K(K-1) directions
    directions: dict[str, float]  # "query->gallery", query-major order


def _title(k: int | None) -> str:
    return "MAP@all" if k is None else f"MAP@{k}"


def result_line(result: DirectionResult) -> str:
    """The released code's log line, byte for byte (trailing comma included).

    The caller prefixes "test resutls@all:" or "test resutls@50:".
    """
    return (' - mean: %.5f - detail:' % result.mean
            + ''.join('%.5f,' % value for value in result.directions.values()))


def format_table(results: list[DirectionResult]) -> str:
    """One block per k: rows are query modalities, columns gallery modalities."""
    blocks = []
    for result in results:
        corner = "query \\ gallery"
        width = max(len(corner), *(len(name) for name in result.names))
        cell = max(7, *(len(name) for name in result.names))
        lines = [f"{_title(result.k)}  (mean {result.mean:.5f})",
                 corner.ljust(width) + "".join(f"  {name:>{cell}}" for name in result.names)]
        for i, name in enumerate(result.names):
            cells = ["—" if i == j else f"{value:.5f}" for j, value in enumerate(result.matrix[i])]
            lines.append(name.ljust(width) + "".join(f"  {c:>{cell}}" for c in cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def metrics_dict(results: list[DirectionResult]) -> dict[str, dict]:
    """JSON-ready {"map_all": {"mean": x, "directions": {...}}, "map_50": ...}."""
    out: dict[str, dict] = {}
    for result in results:
        key = "map_all" if result.k is None else f"map_{result.k}"
        if key in out:
            raise ValueError(f"two results for {_title(result.k)}; pass one result per k")
        out[key] = {"mean": float(result.mean),
                    "directions": {name: float(v) for name, v in result.directions.items()}}
    return out
