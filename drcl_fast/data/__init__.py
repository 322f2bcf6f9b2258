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
    """Load a data set by name.

    With `path`, a generic container (.npz, .h5, .hdf5 or .mat, see generic.py)
    is read and `name` only names it. Otherwise `mfeat` is the bundled data and
    the released DRCL names are read from `data_root`. `path_option` is how the
    caller's user gives `path`, as the error for an unknown name spells it:
    "path=FILE" here, "--data_path FILE" on the command line.
    """
    if path is not None:
        return load_generic(path, name)
    if name == "mfeat":
        return load_mfeat()
    if name in RELEASED:
        return RELEASED[name](data_root)
    raise DataError(f"unknown dataset {name!r}; known names: {', '.join(DATASETS)}. For other data pass "
                    f"{path_option}, a generic container (.npz, .h5, .hdf5 or .mat); {name!r} then only names it")
