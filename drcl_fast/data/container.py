"""The in-memory form every reader produces: K modalities x three splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A dataset file or array is missing, unreadable or inconsistent."""


@dataclass
class Split:
    """Features and labels of one split, one entry per modality.

    Labels are kept as the file gives them: an int64 vector of class ids
    (single-label) or an (n, C) 0/1 matrix (multi-label).
    """

    features: list[np.ndarray]
    labels: list[np.ndarray]


@dataclass
class MultiModalData:
    """K modalities with train / valid / test splits and a shared label space."""

    name: str
    modalities: list[str]
    train: Split
    valid: Split
    test: Split
    classes: np.ndarray | None = field(default=None)  # sorted class ids; None when multi-label

    def __post_init__(self) -> None:
        k = len(self.modalities)
        for split_name in SPLITS:
            split = getattr(self, split_name)
            if len(split.features) != k or len(split.labels) != k:
                raise DataError(
                    f"dataset {self.name!r}: split {split_name!r} has {len(split.features)} feature "
                    f"and {len(split.labels)} label arrays for {k} modalities {self.modalities}")
            split.features = [np.ascontiguousarray(x, dtype=np.float32) for x in split.features]
            split.labels = [_squeeze_label_vector(y) for y in split.labels]
        if self.classes is None and not self.multilabel:
            ids = np.concatenate([y for y in self.train.labels])
            self.classes = np.unique(ids[ids >= 0])

    @property
    def multilabel(self) -> bool:
        return self.train.labels[0].ndim == 2

    @property
    def num_classes(self) -> int:
        if self.multilabel:
            return int(self.train.labels[0].shape[1])
        return int(len(self.classes))

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def input_dims(self) -> list[int]:
        return [int(x.shape[1]) for x in self.train.features]

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Labels as float32 (n, C) targets: one-hot over `classes`, or multi-hot as given."""
        if labels.ndim == 2:
            return labels.astype(np.float32)
        return (labels.reshape(-1, 1) == self.classes.reshape(1, -1)).astype(np.float32)

    def select(self, modality_ids: list[int]) -> "MultiModalData":
        """A view of some modalities only (same arrays, same label space)."""
        pick = lambda s: Split([s.features[i] for i in modality_ids], [s.labels[i] for i in modality_ids])
        return MultiModalData(self.name, [self.modalities[i] for i in modality_ids],
                              pick(self.train), pick(self.valid), pick(self.test), self.classes)


def _squeeze_label_vector(y: np.ndarray) -> np.ndarray:
    """(n,), (n, 1) and (1, n) class-id arrays become an int64 vector; (n, C) stays a 0/1 matrix."""
    y = np.asarray(y)
    if y.ndim == 2 and min(y.shape) == 1:
        y = y.reshape(-1)
    if y.ndim == 1:
        return y.astype(np.int64)
    return (y != 0).astype(np.float32)
