"""The in-memory form every reader produces: K modalities x three splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drcl_fast.data import validate
from drcl_fast.errors import DataError

SPLITS = ("train", "valid", "test")


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
            where = [f"dataset {self.name!r}, split {split_name!r}, modality {m!r}" for m in self.modalities]
            split.features = [validate.features_array(x, w) for x, w in zip(split.features, where)]
            split.labels = [validate.labels_array(y, w) for y, w in zip(split.labels, where)]
            for x, y, w in zip(split.features, split.labels, where):
                validate.check_rows(x, y, w)
        for m, widths in zip(self.modalities, zip(*(self.split(s).features for s in SPLITS))):
            if len({x.shape[1] for x in widths}) > 1:
                raise DataError(f"dataset {self.name!r}, modality {m!r}: feature width differs between splits "
                                f"({', '.join(f'{s} {x.shape[1]}' for s, x in zip(SPLITS, widths))}); "
                                f"every split must use the same features")
        classes = validate.check_label_space(self.name, self.modalities,
                                             {s: self.split(s).labels for s in SPLITS})
        if self.classes is None:
            self.classes = classes

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
