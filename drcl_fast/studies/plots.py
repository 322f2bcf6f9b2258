"""The studies' pictures: a heatmap of a metric over the α × β grid, and bars of metrics per prior."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from drcl_fast.errors import ConfigError
from drcl_fast.outputs import atomic_write


def require_matplotlib() -> None:
    """Stop before training, not after it, when the pictures cannot be drawn.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("the study's pictures need matplotlib: pip install matplotlib (or drcl_fast[plot])")


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt
    return plt


def _save(figure: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=130))
    figure.clear()
    _pyplot().close(figure)


def heatmap(path: Path, values: np.ndarray, rows: Sequence[float], columns: Sequence[float], *,
            row_label: str, column_label: str, title: str, value_label: str) -> None:
    """A PNG of `values` (len(rows) x len(columns)), each cell annotated, with a colour bar.

    Args:
        path: the PNG to write (atomically).
        values: the metric at each (row, column) of the grid.
        rows, columns: the grid's values on the vertical and horizontal axes, in order.
        row_label, column_label: the axes' names.
        title: the picture's title.
        value_label: the colour bar's name.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(1.25 * len(columns) + 2.6, 0.9 * len(rows) + 1.9))
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(columns)), [f"{v:g}" for v in columns])
    axes.set_yticks(range(len(rows)), [f"{v:g}" for v in rows])
    axes.set(xlabel=column_label, ylabel=row_label, title=title)
    low, high = float(np.min(values)), float(np.max(values))
    for (i, j), value in np.ndenumerate(values):
        # Dark text on the light (high) end of viridis, light text on the dark end.
        light = high > low and (value - low) / (high - low) > 0.6
        axes.text(j, i, f"{value:.4f}", ha="center", va="center", fontsize=9,
                  color="black" if light else "white")
    figure.colorbar(image, ax=axes, label=value_label)
    figure.tight_layout()
    _save(figure, path)


def bars(path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
         group_label: str, value_label: str) -> None:
    """A PNG of grouped bars: one group per entry of `groups`, one bar per series, each bar annotated.

    The value axis starts a little below the smallest value, so that close results stay apart; the
    annotations give the values themselves.

    Args:
        path: the PNG to write (atomically).
        groups: the groups' names, along the horizontal axis.
        series: each series' name and its value per group.
        title: the picture's title.
        group_label: the horizontal axis's name.
        value_label: the vertical axis's name.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(1.1 * len(groups) + 2.4, 4.2))
    width = 0.8 / len(series)
    everything = [v for values in series.values() for v in values]
    low, high = min(everything), max(everything)
    margin = max(high - low, 0.01)
    for n, (name, values) in enumerate(series.items()):
        where = np.arange(len(groups)) + (n - (len(series) - 1) / 2) * width
        drawn = axes.bar(where, values, width, label=name)
        axes.bar_label(drawn, [f"{v:.4f}" for v in values], fontsize=7, rotation=90, padding=2)
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    bottom = max(0.0, low - margin)
    axes.set_ylim(bottom, high + 0.4 * (high - bottom))   # room above the bars for their annotations
    axes.set(xlabel=group_label, ylabel=value_label, title=title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))   # clear of the bars
    figure.tight_layout()
    _save(figure, path)
