"""Checks every dataset passes before anything trains on it.

Each failure names the dataset, split and modality (and, for an array read from
a file, its key and the file), says what is wrong and what to do; arrays come back
normalised (float32 features, int64 class-id vectors or float32 0/1 label matrices).
"""
from __future__ import annotations

import warnings

import numpy as np

from drcl_fast.data.source import Source, Sources
from drcl_fast.errors import DataError, DataWarning


def features_array(x: object, where: str) -> np.ndarray:
    """Numeric, finite, 2-D float32 features."""
    try:
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"dtype {x.dtype}")
        with np.errstate(over="ignore"):  # values beyond float32 become Inf, refused just below
            x = np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: features are not numeric ({err}); store them as a float matrix") from None
    if x.ndim != 2:
        raise DataError(f"{where}: features must be a 2-D (rows x width) matrix, got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: the split is empty (0 rows); every split needs data")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} row(s) hold NaN or Inf (first: row {int(np.argmax(bad))}); "
                        f"clean or drop them before training")
    zero = ~x.any(axis=1)
    if zero.any():
        warnings.warn(f"{where}: {int(zero.sum())} all-zero feature row(s) (first: row {int(np.argmax(zero))}); "
                      f"they carry no information", DataWarning, stacklevel=5)
    return x


def labels_array(y: object, where: str) -> np.ndarray:
    """Class ids as an int64 vector ((n,), (n,1), (1,n)), or a 0/1 matrix as float32."""
    try:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise TypeError(f"dtype {y.dtype}")
        y = y.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: labels are not numeric ({err}); store class ids or a 0/1 matrix") from None
    if y.ndim == 2 and min(y.shape) == 1:
        y = y.reshape(-1)
    if y.ndim not in (1, 2):
        raise DataError(f"{where}: labels must be a vector of class ids or an (n, C) 0/1 matrix, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise DataError(f"{where}: labels hold NaN or Inf")
    if y.ndim == 2:
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"{where}: a label matrix must hold only 0 and 1 (multi-hot), found values "
                            f"{np.unique(y[~np.isin(y, (0.0, 1.0))])[:5].tolist()}")
        return y.astype(np.float32)
    if (y != np.round(y)).any():
        raise DataError(f"{where}: class ids must be integers, found {y[y != np.round(y)][:5].tolist()}")
    if (y < 0).any():
        raise DataError(f"{where}: class ids must not be negative, found {np.unique(y[y < 0]).astype(np.int64)[:5].tolist()}")
    return y.astype(np.int64)


def located(where: str, source: Source | None) -> str:
    """`where`, followed by the file's key and path when the array came from a file."""
    return where if source is None else f"{where} ({source} of {source.path})"


def row_count(a: np.ndarray) -> int:
    """Rows of an array as a reader gives it (a 0-d array is one value: one row)."""
    return int(a.shape[0]) if a.ndim else 1


def check_rows(x: np.ndarray, y: np.ndarray, where: str, sources: Sources | None = None) -> None:
    """Features and labels pair up row by row; a mismatch names both keys when they came from a file."""
    nx, ny = row_count(x), row_count(y)
    if nx == ny:
        return
    if sources is None:
        raise DataError(f"{where}: {nx} feature rows but {ny} label rows; they must pair up row by row")
    raise DataError(f"{where}: {sources.features} ({nx:,} rows) and {sources.labels} ({ny:,} rows) in "
                    f"{sources.features.path} must pair up row by row, one row per item; fix the one that is wrong")


def check_widths(where: str, features: dict[str, np.ndarray], sources: dict[str, Source | None]) -> None:
    """One feature width in every split (features and sources by split name)."""
    widths = {s: int(x.shape[1]) for s, x in features.items()}
    if len(set(widths.values())) == 1:
        return
    if any(source is None for source in sources.values()):
        listed = ", ".join(f"{s} {w}" for s, w in widths.items())
        raise DataError(f"{where}: feature width differs between splits ({listed}); every split must use "
                        f"the same features")
    # Splits cut from one array share its key: name each key once, with the splits it feeds.
    splits_of: dict[str, list[str]] = {}
    for s, source in sources.items():
        splits_of.setdefault(source.key, []).append(s)
    listed = ", ".join(f"`{key}` {widths[splits[0]]} wide ({', '.join(splits)})" for key, splits in splits_of.items())
    path = next(iter(sources.values())).path
    raise DataError(f"{where}: feature width differs between splits: {listed}, in {path}; every split must "
                    f"use the same features: fix the one that differs")


def check_label_space(name: str, modalities: list[str], labels: dict[str, list[np.ndarray]]) -> np.ndarray | None:
    """One label kind everywhere, at least two classes, no class unseen in training.

    Returns the sorted training class ids (single-label) or None (multi-label).
    """
    kinds = {(s, m): (y.ndim, y.shape[1] if y.ndim == 2 else None)
             for s, ys in labels.items() for m, y in zip(modalities, ys)}
    if len(set(kinds.values())) > 1:
        described = ", ".join(f"{s}/{m}: {'matrix with %d columns' % c if d == 2 else 'class ids'}"
                              for (s, m), (d, c) in kinds.items())
        raise DataError(f"dataset {name!r}: labels differ in kind across splits or modalities ({described}); "
                        f"use class ids everywhere or 0/1 matrices with the same columns everywhere")
    train = labels["train"]
    if train[0].ndim == 2:
        seen = np.logical_or.reduce([y.any(axis=0) for y in train])
        if train[0].shape[1] < 2:
            raise DataError(f"dataset {name!r}: only one class; retrieval by class needs at least two")
        for split in ("valid", "test"):
            for m, y in zip(modalities, labels[split]):
                unseen = np.flatnonzero(y.any(axis=0) & ~seen)
                if unseen.size:  # other labels still make these items retrievable: warn only
                    warnings.warn(f"dataset {name!r}, {split}/{m}: label column(s) {unseen[:10].tolist()} occur "
                                  f"here but never in training; the model cannot learn them", DataWarning,
                                  stacklevel=3)
        return None
    classes = np.unique(np.concatenate(train))
    if classes.size < 2:
        raise DataError(f"dataset {name!r}: the training labels hold one class only ({classes.tolist()}); "
                        f"retrieval by class needs at least two")
    for split in ("valid", "test"):
        for m, y in zip(modalities, labels[split]):
            unseen = np.setdiff1d(np.unique(y), classes)
            if unseen.size:
                raise DataError(f"dataset {name!r}, {split}/{m}: class id(s) {unseen[:10].tolist()} occur here "
                                f"but never in training (training classes: {classes[:20].tolist()}...)")
    return classes
