"""Property: a reader given a randomly damaged file either loads it or raises DataError.

Never another exception type, whatever the damage: truncation, overwritten bytes
in headers, compressed streams or array data.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io as sio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drcl_fast.data import DataError, MultiModalData, load_dataset, load_generic, save_generic
from tests.data.test_bad_input import toy


def _wiki(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"train_imgs_deep": rng.normal(size=(12, 4)), "train_texts_doc": rng.normal(size=(12, 3)),
              "train_imgs_labels": np.arange(12) % 3 + 1, "test_imgs_deep": rng.normal(size=(240, 4)),
              "test_texts_doc": rng.normal(size=(240, 3)), "test_imgs_labels": np.arange(240) % 3 + 1}
    sio.savemat(folder / "wiki.mat", arrays)
    return folder / "wiki.mat"


def _wiki_v73(folder: Path) -> Path:
    """wiki.mat as MATLAB v7.3 writes it: HDF5, arrays transposed."""
    rng = np.random.default_rng(1)
    with h5py.File(folder / "wiki.mat", "w") as f:
        for key, shape in (("train_imgs_deep", (12, 4)), ("train_texts_doc", (12, 3)),
                           ("test_imgs_deep", (240, 4)), ("test_texts_doc", (240, 3))):
            f[key] = rng.normal(size=shape).T
        f["train_imgs_labels"] = (np.arange(12) % 3 + 1).reshape(1, -1).astype(float)
        f["test_imgs_labels"] = (np.arange(240) % 3 + 1).reshape(1, -1).astype(float)
    return folder / "wiki.mat"


def _nus(folder: Path) -> Path:
    rng = np.random.default_rng(2)
    with h5py.File(folder / "nus_wide_deep_doc2vec-corr-ae.h5py", "w") as f:
        for split, n in (("train", 12), ("valid", 6), ("test", 6)):
            f[f"{split}_imgs_deep"] = rng.normal(size=(n, 4))
            f[f"{split}_texts"] = rng.normal(size=(n, 3))
            f[f"{split}_imgs_labels"] = np.eye(3)[np.arange(n) % 3]
    return folder / "nus_wide_deep_doc2vec-corr-ae.h5py"


def _inria(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    arrays = {}
    for prefix, n in (("tr", 12), ("val", 6), ("te", 6)):
        arrays.update({f"{prefix}_img": rng.normal(size=(n, 4)), f"{prefix}_txt": rng.normal(size=(n, 3)),
                       f"{prefix}_img_lab": np.arange(n) % 3})
    sio.savemat(folder / "INRIA-Websearch.mat", arrays)
    return folder / "INRIA-Websearch.mat"


def _generic(suffix: str):
    def write(folder: Path) -> Path:
        path = folder / f"toy{suffix}"
        save_generic(path, toy())
        return path
    return write


FORMATS = {
    "wiki .mat v5": (_wiki, lambda p: load_dataset("wiki", data_root=p.parent)),
    "wiki .mat v7.3": (_wiki_v73, lambda p: load_dataset("wiki", data_root=p.parent)),
    "nus .h5py": (_nus, lambda p: load_dataset("nus", data_root=p.parent)),
    "INRIA .mat": (_inria, lambda p: load_dataset("INRIA-Websearch", data_root=p.parent)),
    "generic .npz": (_generic(".npz"), load_generic),
    "generic .h5": (_generic(".h5"), load_generic),
    "generic .mat": (_generic(".mat"), load_generic),
}

damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.binary(max_size=0)),
    st.tuples(st.just("overwrite"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=64)),
)


@pytest.fixture(scope="module")
def pristine():
    folder = Path(tempfile.mkdtemp())
    files = {}
    for name, (write, _) in FORMATS.items():
        sub = folder / name.replace(" ", "_")
        sub.mkdir()
        files[name] = write(sub)
    yield files
    shutil.rmtree(folder)


@pytest.mark.parametrize("fmt", list(FORMATS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damages=st.lists(damage, min_size=1, max_size=3))
def test_damaged_file_loads_or_raises_data_error(pristine, fmt, damages):
    original = pristine[fmt]
    raw = bytearray(original.read_bytes())
    for kind, where, payload in damages:
        at = int(where * len(raw))
        if kind == "truncate":
            raw = raw[:at]
        else:
            raw[at:at + len(payload)] = payload
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / original.name
        path.write_bytes(bytes(raw))
        try:
            data = FORMATS[fmt][1](path)
        except DataError:
            return
        assert isinstance(data, MultiModalData) and data.num_modalities == 2


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_undamaged_files_load(pristine, fmt):
    assert FORMATS[fmt][1](pristine[fmt]).num_modalities == 2
