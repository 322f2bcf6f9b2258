"""The bundled default data set: UCI "Multiple Features" handwritten digits, six views.

See assets/MFEAT_README.md for its origin, license and split.
"""
from __future__ import annotations

from importlib import resources

import numpy as np

from .container import SPLITS, MultiModalData, Split, Standardisation

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")


def _arrays() -> dict[str, np.ndarray]:
    asset = resources.files("drcl_fast.data") / "assets" / "mfeat.npz"
    with asset.open("rb") as fh, np.load(fh) as npz:
        return dict(npz)


def load_mfeat() -> MultiModalData:
    """mfeat with its stored stratified split, each view standardised with training statistics."""
    npz = _arrays()
    labels = npz["labels"]
    rows = {s: npz[f"split_{s}"] for s in SPLITS}
    views = [npz[f"x_{v}"].astype(np.float64) for v in VIEWS]
    splits = {s: Split([], []) for s in SPLITS}
    preprocessing = []
    for x in views:
        train = x[rows["train"]]
        mean, std = train.mean(axis=0), train.std(axis=0)
        # A column constant on the training rows carries no information: map it to 0, not NaN.
        std[std == 0] = 1.0
        preprocessing.append(Standardisation(mean, std))
        for s in SPLITS:
            splits[s].features.append(preprocessing[-1].apply(x[rows[s]]))
            splits[s].labels.append(labels[rows[s]])
    return MultiModalData("mfeat", list(VIEWS), **splits, preprocessing=preprocessing,
                          class_names=[str(digit) for digit in range(10)])


def load_mfeat_raw(split: str = "test") -> tuple[list[np.ndarray], np.ndarray]:
    """One split's rows as the UCI files hold them (before standardisation), per view, and their labels."""
    npz = _arrays()
    rows = npz[f"split_{split}"]
    return [npz[f"x_{v}"][rows] for v in VIEWS], npz["labels"][rows]
