"""The in-memory form every reader produces: K modalities x three splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drcl_fast.data import validate
from drcl_fast.data.source import Sources
from drcl_fast.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    """Features and labels of one split, one entry per modality.

    Labels are kept as the file gives them: an int64 vector of class ids
    (single-label) or an (n, C) 0/1 matrix (multi-label). `sources` says where a
    reader found each modality's arrays; None for arrays built in memory.
    """

    features: list[np.ndarray]
    labels: list[np.ndarray]
    sources: list[Sources] | None = None

    def source(self, k: int) -> Sources | None:
        return None if self.sources is None else self.sources[k]

    def select(self, modality_ids: list[int]) -> "Split":
        pick = lambda arrays: None if arrays is None else [arrays[i] for i in modality_ids]
        return Split(pick(self.features), pick(self.labels), pick(self.sources))


@dataclass(frozen=True)
class Standardisation:
    """What a loader did to a modality's raw rows: (x - mean) / scale, per column, in float64.

    A trained model keeps it, so that raw rows encode as the training rows did.
    """

    mean: np.ndarray    # float64, one per column
    scale: np.ndarray   # float64, one per column; 1 where the training column was constant

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw rows as the loader gave them to training (the same float64 operations, hence the same bits)."""
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


@dataclass
class MultiModalData:
    """K modalities with train / valid / test splits and a shared label space."""

    name: str
    modalities: list[str]
    train: Split
    valid: Split
    test: Split
    classes: np.ndarray | None = field(default=None)  # sorted class ids; None when multi-label
    # What the loader applied to each modality's raw rows (None: used as read), and the classes' names
    # in the order of `classes` (single-label) or of the label columns (multi-label), where known.
    preprocessing: list[Standardisation | None] | None = field(default=None)
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        for split_name in SPLITS:
            self._check_split(split_name)
        for k, m in enumerate(self.modalities):
            sources = {s: self.split(s).source(k) for s in SPLITS}
            validate.check_widths(f"dataset {self.name!r}, modality {m!r}",
                                  {s: self.split(s).features[k] for s in SPLITS},
                                  {s: None if src is None else src.features for s, src in sources.items()})
        classes = validate.check_label_space(self.name, self.modalities,
                                             {s: self.split(s).labels for s in SPLITS})
        if self.classes is None:
            self.classes = classes
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DataError(f"dataset {self.name!r} names {len(self.class_names)} classes but its labels have "
                            f"{self.num_classes}; give one name per class (in the order of the sorted class ids, "
                            f"or of the label columns) or none")
        if self.preprocessing is not None and len(self.preprocessing) != len(self.modalities):
            raise DataError(f"dataset {self.name!r}: {len(self.preprocessing)} preprocessing entries for "
                            f"{len(self.modalities)} modalities; give one per modality (None: rows used as read)")

    def _check_split(self, split_name: str) -> None:
        """Normalise one split's arrays in place; refuse them if they cannot train."""
        split, k = self.split(split_name), len(self.modalities)
        if len(split.features) != k or len(split.labels) != k:
            raise DataError(
                f"dataset {self.name!r}: split {split_name!r} has {len(split.features)} feature "
                f"and {len(split.labels)} label arrays for {k} modalities {self.modalities}")
        features, labels = [], []
        for i, m in enumerate(self.modalities):
            where, source = f"dataset {self.name!r}, split {split_name!r}, modality {m!r}", split.source(i)
            x = validate.features_array(split.features[i], validate.located(where, source and source.features))
            y = validate.labels_array(split.labels[i], validate.located(where, source and source.labels))
            validate.check_rows(x, y, where, source)
            features.append(x)
            labels.append(y)
        split.features, split.labels = features, labels

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

    def unlabelled_rows(self, split: str, k: int) -> np.ndarray:
        """Boolean mask of modality k's rows in `split` with no label: all-zero rows of a label matrix.

        Single-label rows always hold one class id, so none of theirs is unlabelled.
        """
        labels = self.split(split).labels[k]
        if labels.ndim == 1:
            return np.zeros(len(labels), dtype=bool)
        return ~labels.any(axis=1)

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Labels as float32 (n, C) targets: one-hot over `classes`, or multi-hot as given."""
        if labels.ndim == 2:
            return labels.astype(np.float32)
        return (labels.reshape(-1, 1) == self.classes.reshape(1, -1)).astype(np.float32)

    def select(self, modality_ids: list[int]) -> "MultiModalData":
        """A view of some modalities only (same arrays, same label space)."""
        preprocessing = None if self.preprocessing is None else [self.preprocessing[i] for i in modality_ids]
        return MultiModalData(self.name, [self.modalities[i] for i in modality_ids],
                              *(self.split(s).select(modality_ids) for s in SPLITS), self.classes,
                              preprocessing, self.class_names)

    def preprocessing_of(self, k: int) -> Standardisation | None:
        return None if self.preprocessing is None else self.preprocessing[k]
