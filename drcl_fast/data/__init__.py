"""Data sets for drcl_fast: the released DRCL files, a generic container, and bundled mfeat."""
from __future__ import annotations

from pathlib import Path

from .container import SPLITS, DataError, MultiModalData, Split
from .generic import load_generic, save_generic
from .mfeat import load_mfeat
from .released import RELEASED

DATASETS = tuple(RELEASED) + ("mfeat",)

__all__ = ["DataError", "Split", "MultiModalData", "SPLITS", "load_dataset",
           "load_generic", "save_generic", "load_mfeat", "DATASETS"]


def load_dataset(name: str, data_root: str | Path = "datasets",
                 path: str | Path | None = None, *, path_option: str = "path=FILE") -> MultiModalData:
    """Load a data set by name: the bundled mfeat digits, a released DRCL dataset, or a generic container.

    Args:
        name: "mfeat" (bundled: UCI Multiple Features, six views of handwritten digits),
            a released DRCL name ("wiki", "xmedia", "xmedianet", "nus", "INRIA-Websearch"),
            or, with `path`, any name for the container's data (it names the output files).
        data_root: the folder holding the released datasets' files (as the released code's `datasets`).
        path: a generic container (.npz, .h5, .hdf5 or .mat; drcl_fast/data/generic.py) to read
            instead; `name` then only names it.
        path_option: how the caller's user gives `path`, as the error for an unknown name spells
            it: "path=FILE" here, "--data_path FILE" on the command line.

    Returns:
        MultiModalData: K modalities' features and labels in train / valid / test splits, with
        a shared label space (`modalities`, `num_classes`, `train.features[k]`, ...).

    Raises:
        DataError: an unknown name without `path`; a file that is missing, unreadable or not of
            the expected layout; arrays that cannot train (no rows, NaN, mismatched rows or widths,
            label spaces that differ between modalities). The message names the file and the fix.

    Example:
        >>> from drcl_fast import load_dataset
        >>> data = load_dataset("mfeat")
        >>> data.modalities, data.num_classes
        (['fou', 'fac', 'kar', 'pix', 'zer', 'mor'], 10)
        >>> data.train.features[0].shape, data.test.features[0].shape, data.test.labels[0].dtype
        ((1400, 76), (400, 76), dtype('int64'))
        >>> load_dataset("digits")
        Traceback (most recent call last):
            ...
        drcl_fast.errors.DataError: unknown dataset 'digits'; known names: wiki, ..., mfeat. For other data ...
    """
    if path is not None:
        return load_generic(path, name)
    if name == "mfeat":
        return load_mfeat()
    if name in RELEASED:
        return RELEASED[name](data_root)
    raise DataError(f"unknown dataset {name!r}; known names: {', '.join(DATASETS)}. For other data pass "
                    f"{path_option}, a generic container (.npz, .h5, .hdf5 or .mat); {name!r} then only names it")
