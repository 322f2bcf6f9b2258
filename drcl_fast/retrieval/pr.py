"""Precision-recall curves of cosine retrieval (the DRCL paper's Figure 2).

A point per rank cutoff t: precision(t) = mean over queries of (relevant items
in the first t) / t, and recall(t) = mean over queries of (relevant items in the
first t) / (relevant items in the whole gallery). Queries with nothing relevant
in the gallery have no recall and are left out of both means. Any backend
counts the relevant items at the cutoffs; the curve is the same from each.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

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


def split_direction(name: str, modalities: Sequence[str] | None = None) -> tuple[str, str] | None:
    """(query, gallery) of a direction named "query->gallery", else None.

    With `modalities`, both parts must be among them (a name may itself hold "->": the
    split that yields two of them is taken)."""
    parts = name.split("->")
    for cut in range(1, len(parts)):
        query, gallery = "->".join(parts[:cut]), "->".join(parts[cut:])
        if modalities is None or (query in modalities and gallery in modalities):
            return query, gallery
    return None


def plot_curves(path: str | Path, curves: Mapping[str, PRCurve], title: str = "",
                modalities: Sequence[str] | None = None) -> None:
    """A PNG of the curves: a panel per query modality, with its gallery modalities as curves.

    Directions are named "query->gallery"; `modalities` orders the panels and the gallery
    colours (default: the order the names first appear in). A gallery modality has one colour
    and line style in every panel, named once by a legend outside the panels: in the grid's
    spare cell when it has one, else to the right. Curves named otherwise share one panel.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display is needed or wanted
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise ConfigError("the precision-recall plot needs matplotlib: pip install matplotlib "
                          "(or drcl_fast[plot]); the curve data can still be written as CSV") from None
    if not curves:
        raise ConfigError("there is no precision-recall curve to plot")
    panels, entries, heading = _panels(curves, modalities)
    styles = {entry: _style(i, len(entries)) for i, entry in enumerate(entries)}
    count = len(panels)
    columns = count if count <= 3 else math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(0.6 + 3.3 * columns, 0.8 + 3.0 * rows),
                                sharex=True, sharey=True, squeeze=False)
    cells = list(grid.flat)
    for index, (axes, (query, lines)) in enumerate(zip(cells, panels.items())):
        for entry, curve in lines.items():
            axes.plot(curve.recall, curve.precision, linewidth=1.5, **styles[entry])
        if query is not None:
            axes.set_title(f"{query} as query", fontsize="medium")
        axes.set(xlim=(0, 1), ylim=(0, 1.02))
        axes.grid(alpha=0.3)
        # Shared axes: every panel keeps its tick labels; the outer ones are labelled.
        axes.tick_params(labelbottom=True, labelleft=True)
        if index + columns >= count:   # the lowest panel of its column
            axes.set_xlabel("recall")
        if index % columns == 0:
            axes.set_ylabel("precision")
    figure.suptitle(f"{title}: precision-recall" if title else "precision-recall")
    figure.tight_layout()
    handles = [Line2D([], [], linewidth=2, **styles[entry]) for entry in entries]
    legend = dict(title=heading, frameon=False, fontsize="medium", title_fontsize="medium")
    if count < len(cells):
        spare = cells[count].get_position()   # the first spare cell holds the legend
        figure.legend(handles, entries, loc="center", bbox_to_anchor=spare.bounds, **legend)
    else:
        figure.legend(handles, entries, loc="center left", bbox_to_anchor=(1.0, 0.5), **legend)
    for axes in cells[count:]:
        figure.delaxes(axes)
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(figure)


def _panels(curves: Mapping[str, PRCurve], modalities: Sequence[str] | None
            ) -> tuple[dict[str | None, dict[str, PRCurve]], list[str], str | None]:
    """({query: {gallery: curve}}, the galleries in legend order, the legend's heading); for curves
    that are not all "query->gallery" directions, ({None: curves}, their names, None)."""
    split = {name: split_direction(name, modalities) for name in curves}
    if any(parts is None for parts in split.values()):
        return {None: dict(curves)}, list(curves), None
    order = list(modalities) if modalities is not None else \
        list(dict.fromkeys(m for parts in split.values() for m in parts))
    panels: dict[str | None, dict[str, PRCurve]] = {}
    for query in order:
        lines = {g: curves[name] for name, (q, g) in split.items() if q == query}
        if lines:
            panels[query] = dict(sorted(lines.items(), key=lambda item: order.index(item[0])))
    galleries = {g for _, g in split.values()}
    return panels, [m for m in order if m in galleries], "gallery"


LINE_STYLES = ("-", "--", "-.", (0, (1, 1)))


def _style(index: int, count: int) -> dict[str, Any]:
    """Entry `index` of `count`: a colour of its own (tab10 up to ten, tab20 up to twenty, then
    spread over a colour wheel) and a line style, so that curves that coincide still show."""
    import matplotlib
    if count <= 10:
        colour = matplotlib.colormaps["tab10"](index)
    elif count <= 20:
        colour = matplotlib.colormaps["tab20"](index)
    else:
        colour = matplotlib.colormaps["hsv"](index / count)
    return {"color": colour, "linestyle": LINE_STYLES[index % len(LINE_STYLES)]}
