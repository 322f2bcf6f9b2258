"""Named-array files (.npz, .h5/.hdf5/.h5py, .mat v5 and v7.3) and the generic container.

The generic container holds any number of modalities, single- or multi-label,
e.g. MS-COCO features. For split s in (train, valid, test) and modality m:

    {s}_{m}_x   (n, d) features
    {s}_{m}_y   (n, C) multi-hot labels, or a vector of n class ids
    modalities  optional array of modality names, giving their order
    class_names optional array of the classes' names: in the order of the sorted class ids
                (single-label) or of the label columns (multi-label); kept with a trained model

Without a `modalities` key the modalities are the distinct m of the
`train_{m}_x` keys in alphabetical order, so a file always loads the same way.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

from .container import SPLITS, DataError, MultiModalData, Split
from .mat5 import check_mat5
from .source import Source, Sources

H5_SUFFIXES = (".h5", ".hdf5", ".h5py")  # .h5py: the released NUS-WIDE file
GENERIC_SUFFIXES = (".npz", ".mat", ".h5", ".hdf5")


class ArrayFile:
    """Read-only named arrays of one file; HDF5 arrays are read only when asked for.

    A .mat file with the HDF5 signature is a MATLAB v7.3 file: its arrays are
    stored column-major, so they are transposed back, and cell arrays (object
    references) are resolved into numpy object arrays as scipy gives them.
    """

    def __init__(self, path: str | Path, dataset: str | None = None) -> None:
        self.path = Path(path)
        self._for = f" (needed by dataset {dataset!r})" if dataset else ""
        self._h5: h5py.File | None = None
        self._arrays = None
        suffix = self.path.suffix.lower()
        self._matlab = suffix == ".mat"
        try:
            if h5py.is_hdf5(self.path):
                self._h5 = h5py.File(self.path, "r")
            elif suffix in H5_SUFFIXES:
                raise DataError(f"cannot read {self.path}{self._for}: not an HDF5 file")
            elif suffix == ".npz":
                self._arrays = np.load(self.path, allow_pickle=False)
            elif suffix == ".mat":
                check_mat5(self.path)
                self._arrays = scipy.io.loadmat(self.path)
            else:
                raise DataError(f"{self.path}: unsupported file type {suffix!r}; "
                                f"expected one of {('.npz', '.mat') + H5_SUFFIXES}")
        except DataError:
            raise
        except Exception as err:  # every reader has its own error types for a bad file
            raise DataError(f"cannot read {self.path}{self._for}: {err}") from err

    def __enter__(self) -> "ArrayFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        elif hasattr(self._arrays, "close"):
            self._arrays.close()

    def keys(self) -> list[str]:
        # scipy adds __header__-style entries and MATLAB v7.3 adds #refs#; neither is data.
        try:
            names = self._h5.keys() if self._h5 is not None else self._arrays.keys()
            return sorted(k for k in names if not k.startswith(("__", "#")))
        except Exception as err:  # a damaged HDF5 index fails only when it is walked
            raise DataError(f"cannot list the arrays in {self.path}{self._for}: {err}") from err

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self:
            raise DataError(f"{self.path}{self._for} has no key {key!r}; "
                            f"keys present: {self.keys()}")
        try:
            if self._h5 is None:
                return np.asarray(self._arrays[key])
            return self._read_h5(self._h5[key])
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"cannot read {key!r} from {self.path}{self._for}: {err}") from err

    def _read_h5(self, node: h5py.Dataset | h5py.Group) -> np.ndarray:
        if not isinstance(node, h5py.Dataset):
            raise DataError(f"{self.path}: {node.name!r} is an HDF5 group, not an array")
        value = np.asarray(node[()])
        if h5py.check_dtype(ref=node.dtype) is not None:
            cells = np.empty(value.shape, dtype=object)
            for idx in np.ndindex(value.shape):
                cells[idx] = self._read_h5(self._h5[value[idx]])
            value = cells
        return value.T if self._matlab and value.ndim >= 2 else value


def label_rows(y: np.ndarray) -> np.ndarray:
    """A 1 x n or n x 1 class-id array as a vector, so that rows can be sliced."""
    return y.reshape(-1) if y.ndim == 2 and min(y.shape) == 1 else y


def read_split(f: ArrayFile, keys: list[tuple[str, str]]) -> Split:
    """One split: each modality's arrays under its (features key, labels key), and where they came from."""
    sources = [Sources(Source(f.path, x), Source(f.path, y)) for x, y in keys]
    return Split([f[x] for x, _ in keys], [label_rows(f[y]) for _, y in keys], sources)


def load_generic(path: str | Path, name: str | None = None) -> MultiModalData:
    """Read a generic container (.npz, .h5/.hdf5 or .mat); `name` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"generic container {path} does not exist")
    with ArrayFile(path) as f:
        modalities = _modality_names(f)
        splits = {s: read_split(f, [(f"{s}_{m}_x", f"{s}_{m}_y") for m in modalities]) for s in SPLITS}
        class_names = [_as_str(item) for item in f["class_names"].ravel()] if "class_names" in f else None
    return MultiModalData(name or path.stem, modalities, **splits, class_names=class_names)


def _modality_names(f: ArrayFile) -> list[str]:
    if "modalities" in f:
        names = [_as_str(item) for item in f["modalities"].ravel()]
    else:
        names = sorted(k[len("train_"):-len("_x")] for k in f.keys()
                       if k.startswith("train_") and k.endswith("_x"))
    if not names:
        raise DataError(f"{f.path}: no modalities; expected a 'modalities' key or "
                        f"'train_<modality>_x' keys, found {f.keys()}")
    return names


def _as_str(item: object) -> str:
    # .mat char matrices pad names with spaces, cell arrays wrap each name in an array,
    # and HDF5 gives bytes.
    if isinstance(item, np.ndarray):
        item = item.ravel()[0]
    if isinstance(item, bytes):
        item = item.decode()
    return str(item).strip()


def save_generic(path: str | Path, data: MultiModalData) -> None:
    """Write `data` in the generic layout; the format follows the suffix (.npz, .h5/.hdf5, .mat)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GENERIC_SUFFIXES:
        raise DataError(f"{path}: cannot write a generic container as {suffix!r}; "
                        f"use one of {GENERIC_SUFFIXES}")
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        split = data.split(s)
        for m, x, y in zip(data.modalities, split.features, split.labels):
            arrays[f"{s}_{m}_x"] = x
            arrays[f"{s}_{m}_y"] = y
    texts = {"modalities": np.array(data.modalities)}
    if data.class_names is not None:
        texts["class_names"] = np.array(data.class_names)
    if suffix == ".npz":
        np.savez_compressed(path, **texts, **arrays)
    elif suffix == ".mat":
        scipy.io.savemat(path, {**texts, **arrays}, do_compression=True)
    else:
        with h5py.File(path, "w") as f:
            for key, value in texts.items():
                f[key] = value.astype(h5py.string_dtype())
            for key, value in arrays.items():
                f.create_dataset(key, data=value, compression="gzip")
