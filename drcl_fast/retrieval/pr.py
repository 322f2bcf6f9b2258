"""Precision-recall curves of cosine retrieval (the DRCL paper's Figure 2).

A point per rank cutoff t: precision(t) = mean over queries of (relevant items
in the first t) / t, and recall(t) = mean over queries of (relevant items in the
first t) / (relevant items in the whole gallery). Queries with nothing relevant
in the gallery have no recall and are left out of both means. Any backend
counts the relevant items at the cutoffs; the curve is the same from each.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from drcl_fast.errors import ConfigError
from drcl_fast.outputs import atomic_write
from drcl_fast.retrieval import dispatch, reference

DEFAULT_POINTS = 100


@dataclass
class PRCurve:
    cutoffs: np.ndarray  # (M,) int64 ranks t
    precision: np.ndarray  # (M,) float64
    recall: np.ndarray  # (M,) float64
    queries: int  # queries averaged (those with at least one relevant item)


def default_cutoffs(gallery_size: int, points: int = DEFAULT_POINTS) -> np.ndarray:
    """About `points` ranks spread evenly over 1..gallery_size (both ends included)."""
    if points < 1:
        raise ConfigError(f"points must be a positive int, got {points!r}")
    return np.unique(np.round(np.linspace(1, gallery_size, min(points, gallery_size))).astype(np.int64))


def relevant_totals(query_labels: torch.Tensor, gallery_labels: torch.Tensor,
                    max_memory: int = reference.DEFAULT_MAX_MEMORY) -> torch.Tensor:
    """(Q,) int64: relevant gallery items per query, from checked labels alone (no ranking).

    Query chunks are sized by the evaluator's rule, so the (chunk, N) relevance stays within `max_memory`."""
    step = reference.auto_chunk_size(len(query_labels), len(gallery_labels), max_memory)
    return torch.cat([reference.relevance(query_labels[start:start + step], gallery_labels).sum(1)
                      for start in range(0, len(query_labels), step)])


def precision_recall(query: Any, query_labels: Any, gallery: Any, gallery_labels: Any,
                     cutoffs: Any = None, backend: str = "auto", max_memory: int | None = None) -> PRCurve:
    """The precision-recall curve at rank `cutoffs` (default: default_cutoffs of the gallery size).

    `max_memory`: bytes for one query chunk's working set, as in evaluate_map (None: the backend's default)."""
    q, yq, g, yg = reference.check_inputs(query, query_labels, gallery, gallery_labels)
    cut = reference.check_cutoffs(default_cutoffs(g.shape[0]) if cutoffs is None else cutoffs, g.shape[0])
    budget = dispatch.memory_budget(max_memory)
    hits = dispatch.hits_at(backend, q.device)(q, yq, g, yg, cut, **budget).double().cpu()
    totals = relevant_totals(yq, yg, **budget).double().cpu()
    counted = totals > 0
    hits, totals = hits[counted], totals[counted]
    if not len(hits):
        raise ConfigError("no query has a relevant item in the gallery, so there is no precision-recall curve")
    precision = (hits / cut.double()).mean(0)
    recall = (hits / totals[:, None]).mean(0)
    return PRCurve(cutoffs=cut.numpy(), precision=precision.numpy(), recall=recall.numpy(),
                   queries=int(counted.sum()))


def save_curves_csv(path: str | Path, curves: Mapping[str, PRCurve]) -> None:
    """One row per (direction, cutoff): direction, cutoff, precision, recall, queries."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["direction", "cutoff", "precision", "recall", "queries"])
            for name, curve in curves.items():
                for t, p, r in zip(curve.cutoffs, curve.precision, curve.recall):
                    out.writerow([name, int(t), f"{p:.6f}", f"{r:.6f}", curve.queries])
    atomic_write(Path(path), write)


def plot_curves(path: str | Path, curves: Mapping[str, PRCurve], title: str = "") -> None:
    """A PNG with one precision-recall line per direction."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display is needed or wanted
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the precision-recall plot needs matplotlib: pip install matplotlib "
                          "(or drcl_fast[plot]); the curve data can still be written as CSV") from None
    figure, axes = plt.subplots(figsize=(6, 5))
    for name, curve in curves.items():
        axes.plot(curve.recall, curve.precision, label=name, linewidth=1.2)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=2 if len(curves) > 8 else 1)
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)
