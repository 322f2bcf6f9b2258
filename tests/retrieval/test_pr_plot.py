"""The precision-recall picture (`drcl-fast eval --pr_plot`): readable at 2, 5 and 6 modalities.

A panel per query modality with its K-1 gallery modalities as curves, one colour (and line
style) per gallery modality in every panel, one legend outside the panels."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from drcl_fast.cli import main  # noqa: E402
from drcl_fast.retrieval.pr import PRCurve, plot_curves, split_direction  # noqa: E402

matplotlib.use("Agg")


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_curves draws, kept open (it closes them after saving) for inspection."""
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    for figure in figures:
        close(figure)


def curve(seed: int) -> PRCurve:
    rng = np.random.default_rng(seed)
    recall = np.sort(rng.random(20))
    return PRCurve(cutoffs=np.arange(1, 21), precision=np.sort(rng.random(20))[::-1], recall=recall, queries=5)


def check_readable(figure, names: list[str]) -> None:
    count = len(names)
    panels = [axes for axes in figure.axes if axes.get_visible() and axes.axison]
    assert len(panels) == count, "a panel per query modality"
    colours: dict[str, tuple[str, object]] = {}   # gallery -> (colour, line style), the same in every panel
    for axes, query in zip(panels, names):
        assert query in axes.get_title()
        lines = axes.get_lines()
        assert len(lines) == count - 1, "its K-1 gallery modalities as curves"
        seen = {(to_hex(line.get_color()), str(line.get_linestyle())) for line in lines}
        assert len({c for c, _ in seen}) == count - 1, "each curve of a panel has its own colour"
        assert axes.get_legend() is None, "no legend over the curves"
        galleries = [g for g in names if g != query]
        for gallery, line in zip(galleries, lines):
            style = (to_hex(line.get_color()), str(line.get_linestyle()))
            assert colours.setdefault(gallery, style) == style, f"{gallery} drawn alike in every panel"
    assert len({c for c, _ in colours.values()}) == count
    assert len(figure.legends) == 1
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == names
    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for axes in panels:
        assert not box.overlaps(axes.get_window_extent(renderer)), "the legend lies outside every panel"
    assert all(axes.get_xlabel() in ("", "recall") for axes in panels)
    assert any(axes.get_xlabel() == "recall" for axes in panels)
    assert any(axes.get_ylabel() == "precision" for axes in panels)


@pytest.mark.parametrize("count", [2, 5, 6])
def test_a_panel_per_query_modality(tmp_path, drawn, count):
    names = ["fou", "fac", "kar", "pix", "zer", "mor"][:count]
    curves = {f"{q}->{g}": curve(10 * i + j) for i, q in enumerate(names) for j, g in enumerate(names) if q != g}
    plot_curves(tmp_path / "pr.png", curves, title="mfeat", modalities=names)
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"
    (figure,) = drawn
    check_readable(figure, names)
    width, height = figure.get_size_inches()
    assert width <= 12 and height <= 8 and (count < 5 or height >= 5), "panels of a readable size"


def test_eval_draws_the_panels_with_the_modality_names(tmp_path, drawn):
    rng = np.random.default_rng(0)
    names = ["image", "text", "audio", "video", "3d"]
    labels = rng.integers(0, 3, 24)
    files = []
    for k in range(len(names)):
        path = tmp_path / f"m{k}.npz"
        np.savez(path, embeddings=np.eye(3)[labels] + rng.normal(scale=0.8, size=(24, 3)), labels=labels)
        files.append(str(path))
    plot = tmp_path / "pr.png"
    assert main(["eval", "--files", *files, "--names", *names, "--pr_plot", str(plot), "--quiet"]) == 0
    (figure,) = drawn
    check_readable(figure, names)


def test_curves_not_named_as_directions_share_one_panel(tmp_path, drawn):
    plot_curves(tmp_path / "pr.png", {"ours": curve(1), "baseline": curve(2)})
    (figure,) = drawn
    (axes,) = figure.axes
    assert len(axes.get_lines()) == 2 and axes.get_legend() is None and len(figure.legends) == 1


def test_split_direction():
    assert split_direction("image->text") == ("image", "text")
    assert split_direction("a->b->c", ["a->b", "c"]) == ("a->b", "c")
    assert split_direction("a->b->c", ["a", "b->c"]) == ("a", "b->c")
    assert split_direction("ours") is None and split_direction("x->y", ["a", "b"]) is None
