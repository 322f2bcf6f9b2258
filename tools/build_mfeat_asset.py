"""Build drcl_fast/data/assets/mfeat.npz from the UCI mfeat CSVs.

Run once by a maintainer (the package never reads the CSVs):
    python tools/build_mfeat_asset.py /path/to/mfeat  drcl_fast/data/assets/mfeat.npz

The split is stratified and seeded: per class, a permutation drawn from
numpy's PCG64(seed=2025) gives 140 train / 20 validation / 40 test rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
PER_CLASS = {"train": 140, "valid": 20, "test": 40}
SPLIT_SEED = 2025


def read_view(folder: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(folder / f"mfeat-{view}.csv", delimiter=",", skiprows=1)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def stratified_split(labels: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, count in PER_CLASS.items():
            parts[name].append(rows[start:start + count])
            start += count
    return {name: np.sort(np.concatenate(idx)) for name, idx in parts.items()}


def main(src: str, dst: str) -> None:
    folder = Path(src)
    arrays: dict[str, np.ndarray] = {}
    labels = None
    for view in VIEWS:
        x, y = read_view(folder, view)
        if labels is not None and not np.array_equal(labels, y):
            raise SystemExit(f"mfeat-{view}.csv: labels differ from the other views")
        labels = y
        arrays[f"x_{view}"] = x
    arrays["labels"] = labels
    for name, idx in stratified_split(labels).items():
        arrays[f"split_{name}"] = idx
    np.savez_compressed(dst, **arrays)
    print(f"wrote {dst}: {len(labels)} rows, views {VIEWS}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
