"""Data layer: released readers, generic container, bundled mfeat, load_dataset."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from drcl_fast.data import (DATASETS, SPLITS, DataError, MultiModalData, Split, load_dataset,
                            load_generic, load_mfeat, save_generic)

RNG = np.random.default_rng(0)


def feats(n: int, d: int) -> np.ndarray:
    return RNG.standard_normal((n, d)).astype(np.float32)


def ids(n: int, classes: int, base: int = 0) -> np.ndarray:
    # Cycling through the classes makes every class appear in every split.
    return np.arange(n) % classes + base


def write_matlab_v73(path: Path, arrays: dict[str, np.ndarray | list[np.ndarray]]) -> None:
    """An HDF5 .mat as MATLAB -v7.3 writes it: 512-byte user block, column-major arrays,
    cell arrays (given as lists) as object references into #refs#."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for key, value in arrays.items():
            if isinstance(value, list):
                cells = f.create_dataset(key, (len(value), 1), dtype=h5py.ref_dtype)
                for i, cell in enumerate(value):
                    cells[i, 0] = refs.create_dataset(f"{key}{i}", data=np.asarray(cell).T).ref
            else:
                f[key] = np.asarray(value).T


# ----------------------------------------------------------------------------- wiki

def wiki_arrays(n_test: int = 240) -> dict[str, np.ndarray]:
    return {
        "train_imgs_deep": feats(30, 8), "train_texts_doc": feats(30, 6),
        "train_imgs_labels": ids(30, 10, base=1).reshape(-1, 1),
        "test_imgs_deep": feats(n_test, 8), "test_texts_doc": feats(n_test, 6),
        "test_imgs_labels": ids(n_test, 10, base=1).reshape(1, -1)[:, ::-1],  # a 1 x n row
    }


def check_wiki(data: MultiModalData, arrays: dict[str, np.ndarray]) -> None:
    assert data.name == "wiki" and data.modalities == ["image", "text"]
    assert data.input_dims() == [8, 6]
    test_y = arrays["test_imgs_labels"].reshape(-1)
    np.testing.assert_array_equal(data.train.features[1], arrays["train_texts_doc"])
    np.testing.assert_array_equal(data.valid.features[0], arrays["test_imgs_deep"][:231])
    np.testing.assert_array_equal(data.valid.features[1], arrays["test_texts_doc"][:231])
    np.testing.assert_array_equal(data.test.features[0], arrays["test_imgs_deep"][231:])
    for split, y in ((data.train, arrays["train_imgs_labels"].reshape(-1)),
                     (data.valid, test_y[:231]), (data.test, test_y[231:])):
        assert [lab.shape for lab in split.labels] == [y.shape, y.shape]
        np.testing.assert_array_equal(split.labels[0], y)
        np.testing.assert_array_equal(split.labels[1], y)  # texts carry their image's label
    np.testing.assert_array_equal(data.classes, np.arange(1, 11))


@pytest.mark.parametrize("subfolder", ["", "Wiki"])
def test_wiki_reads_and_splits_231(tmp_path: Path, subfolder: str) -> None:
    arrays = wiki_arrays()
    (tmp_path / subfolder).mkdir(exist_ok=True)
    scipy.io.savemat(tmp_path / subfolder / "wiki.mat", arrays)
    data = load_dataset("wiki", data_root=tmp_path)
    check_wiki(data, arrays)
    assert len(data.valid.features[0]) == 231 and len(data.test.features[0]) == 9


def test_wiki_matlab_v73(tmp_path: Path) -> None:
    arrays = wiki_arrays()
    write_matlab_v73(tmp_path / "wiki.mat", arrays)
    check_wiki(load_dataset("wiki", data_root=tmp_path), arrays)


def test_wiki_needs_rows_after_the_validation_block(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "wiki.mat", wiki_arrays(n_test=231))
    with pytest.raises(DataError, match="231"):
        load_dataset("wiki", data_root=tmp_path)


# ----------------------------------------------------------------------------- xmedia

XMEDIA_TEST = {"image": 500, "text": 500, "audio": 100, "3d": 50, "video": 87}
XMEDIA_NAMES = {  # modality: feature prefix, feature suffix, label infix
    "image": ("I", "_CNN", "Img"), "text": ("T", "_BOW", "Txt"), "audio": ("A", "", "Aud"),
    "3d": ("d3", "", "3d"), "video": ("V", "_CNN", "Vid"),
}


def xmedia_arrays() -> dict[str, np.ndarray]:
    arrays = {}
    for i, (m, (pre, suf, lab)) in enumerate(XMEDIA_NAMES.items()):
        n_test = XMEDIA_TEST[m] + 3 + i
        arrays[f"{pre}_tr{suf}"] = feats(40, 3 + i)
        arrays[f"{pre}_te{suf}"] = feats(n_test, 3 + i)
        arrays[f"tr{lab}Cat"] = ids(40, 20, base=1).reshape(-1, 1)
        arrays[f"te{lab}Cat"] = ids(n_test, 20, base=1)  # savemat stores a vector as 1 x n
    return arrays


def test_xmedia_first_rows_are_test_rest_valid(tmp_path: Path) -> None:
    arrays = xmedia_arrays()
    (tmp_path / "XMedia").mkdir()
    scipy.io.savemat(tmp_path / "XMedia" / "XMediaFeatures.mat", arrays)

    data = load_dataset("xmedia", data_root=tmp_path)
    assert data.modalities == list(XMEDIA_NAMES)
    assert data.input_dims() == [3, 4, 5, 6, 7]
    for i, (m, (pre, suf, lab)) in enumerate(XMEDIA_NAMES.items()):
        n, x, y = XMEDIA_TEST[m], arrays[f"{pre}_te{suf}"], arrays[f"te{lab}Cat"]
        np.testing.assert_array_equal(data.test.features[i], x[:n])
        np.testing.assert_array_equal(data.valid.features[i], x[n:])
        assert len(data.valid.features[i]) == len(x) - n > 0
        np.testing.assert_array_equal(data.test.labels[i], y[:n])
        np.testing.assert_array_equal(data.valid.labels[i], y[n:])
        assert data.train.labels[i].shape == (40,)
    assert not data.multilabel and data.num_classes == 20
    np.testing.assert_array_equal(data.classes, np.arange(1, 21))
    np.testing.assert_array_equal(data.targets(np.array([1, 20])).argmax(1), [0, 19])


# ----------------------------------------------------------------------------- xmedianet

def xmedianet_cells() -> dict[str, list[np.ndarray]]:
    rows = {"train": 12, "valid": 5, "test": 7}
    cells: dict[str, list[np.ndarray]] = {}
    for s, n in rows.items():
        cells[s] = [feats(n, 3 + v) for v in range(5)]
        cells[f"{s}_labels"] = [ids(n, 4).reshape(1, -1) for _ in range(5)]
    return cells


def check_xmedianet(data: MultiModalData, cells: dict[str, list[np.ndarray]]) -> None:
    assert data.modalities == ["image", "text", "audio", "3d", "video"]
    assert data.input_dims() == [3, 4, 5, 6, 7]  # cell v is view v
    for s in SPLITS:
        for v in range(5):
            np.testing.assert_array_equal(data.split(s).features[v], cells[s][v])
            expected = cells[f"{s}_labels"][v].reshape(-1)
            np.testing.assert_array_equal(data.split(s).labels[v], expected)
    assert data.num_classes == 4


def save_cells(path: Path, cells: dict[str, list[np.ndarray]]) -> None:
    """Each list as a 1 x 5 MATLAB cell array, as the released XMediaNet file holds them."""
    as_matlab_cells = {}
    for key, value in cells.items():
        cell = np.empty((1, len(value)), dtype=object)
        cell[0, :] = value
        as_matlab_cells[key] = cell
    scipy.io.savemat(path, as_matlab_cells)


def test_xmedianet_cell_arrays(tmp_path: Path) -> None:
    cells = xmedianet_cells()
    (tmp_path / "XMediaNet").mkdir()
    save_cells(tmp_path / "XMediaNet" / "XMediaNet5View_Doc2Vec.mat", cells)
    check_xmedianet(load_dataset("xmedianet", data_root=tmp_path), cells)


def test_xmedianet_matlab_v73_cell_arrays(tmp_path: Path) -> None:
    cells = xmedianet_cells()
    write_matlab_v73(tmp_path / "XMediaNet5View_Doc2Vec.mat", cells)
    check_xmedianet(load_dataset("xmedianet", data_root=tmp_path), cells)


def test_xmedianet_rejects_a_plain_array(tmp_path: Path) -> None:
    arrays: dict[str, object] = {}
    for key, value in xmedianet_cells().items():
        cell = np.empty((1, 5), dtype=object)
        cell[0, :] = value
        arrays[key] = cell
    arrays["valid"] = feats(5, 3)
    scipy.io.savemat(tmp_path / "XMediaNet5View_Doc2Vec.mat", arrays)
    with pytest.raises(DataError, match="'valid' should be a 1x5 cell array"):
        load_dataset("xmedianet", data_root=tmp_path)


# ----------------------------------------------------------------------------- nus, INRIA

def nus_arrays() -> dict[str, np.ndarray]:
    arrays = {}
    for s, n in (("train", 20), ("valid", 6), ("test", 9)):
        arrays.update({f"{s}_imgs_deep": feats(n, 8), f"{s}_texts": feats(n, 5),
                       f"{s}_imgs_labels": np.eye(21, dtype=np.uint8)[np.arange(n) % 21]})
    return arrays


def save_h5(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value


def inria_arrays() -> dict[str, np.ndarray]:
    arrays = {}
    for p, n in (("tr", 25), ("val", 5), ("te", 8)):  # test_inria_reads_class_ids relies on these sizes
        arrays.update({f"{p}_img": feats(n, 6), f"{p}_txt": feats(n, 4), f"{p}_img_lab": ids(n, 5).reshape(-1, 1)})
    return arrays


def test_nus_multi_hot_labels_from_hdf5(tmp_path: Path) -> None:
    rows = {"train": 20, "valid": 6, "test": 9}
    labels = {s: (RNG.random((n, 21)) < 0.2).astype(np.uint8) for s, n in rows.items()}
    arrays = {**nus_arrays(), **{f"{s}_imgs_labels": y for s, y in labels.items()}}
    (tmp_path / "NUS-WIDE").mkdir()
    save_h5(tmp_path / "NUS-WIDE" / "nus_wide_deep_doc2vec-corr-ae.h5py", arrays)
    data = load_dataset("nus", data_root=tmp_path)
    assert data.modalities == ["image", "text"] and data.input_dims() == [8, 5]
    assert data.multilabel and data.num_classes == 21 and data.classes is None
    for s, n in rows.items():
        split = data.split(s)
        assert [len(x) for x in split.features] == [n, n]
        for y in split.labels:
            assert y.shape == (n, 21) and y.dtype == np.float32
            np.testing.assert_array_equal(y, labels[s])


def test_inria_reads_class_ids(tmp_path: Path) -> None:
    rows = {"tr": 25, "val": 5, "te": 8}
    arrays = inria_arrays()
    scipy.io.savemat(tmp_path / "INRIA-Websearch.mat", arrays)
    data = load_dataset("INRIA-Websearch", data_root=tmp_path)
    assert data.name == "INRIA-Websearch" and data.modalities == ["image", "text"]
    for s, p in zip(SPLITS, rows):
        split = data.split(s)
        np.testing.assert_array_equal(split.features[1], arrays[f"{p}_txt"])
        assert split.labels[0].shape == (rows[p],)
        np.testing.assert_array_equal(split.labels[1], arrays[f"{p}_img_lab"].reshape(-1))
    assert data.num_classes == 5


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, filename, subfolder", [
    ("wiki", "wiki.mat", "Wiki"),
    ("xmedia", "XMediaFeatures.mat", "XMedia"),
    ("xmedianet", "XMediaNet5View_Doc2Vec.mat", "XMediaNet"),
    ("nus", "nus_wide_deep_doc2vec-corr-ae.h5py", "NUS-WIDE"),
    ("INRIA-Websearch", "INRIA-Websearch.mat", "INRIA-Websearch"),
])
def test_missing_file_names_paths_and_suggests_mfeat(tmp_path: Path, name: str, filename: str,
                                                     subfolder: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name, data_root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / filename) in message
    assert str(tmp_path / subfolder / filename) in message
    assert repr(name) in message
    assert message.endswith("pass --data_root DIR, or try the bundled data with --datasets mfeat")


def test_missing_key_names_file_key_and_keys_present(tmp_path: Path) -> None:
    arrays = wiki_arrays()
    del arrays["test_texts_doc"]
    scipy.io.savemat(tmp_path / "wiki.mat", arrays)
    with pytest.raises(DataError) as err:
        load_dataset("wiki", data_root=tmp_path)
    message = str(err.value)
    assert "'test_texts_doc'" in message and str(tmp_path / "wiki.mat") in message
    assert "test_imgs_deep" in message


def test_corrupt_file_names_file_and_reason(tmp_path: Path) -> None:
    (tmp_path / "wiki.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(DataError) as err:
        load_dataset("wiki", data_root=tmp_path)
    assert str(tmp_path / "wiki.mat") in str(err.value)
    assert err.value.__cause__ is not None
    nus = tmp_path / "nus_wide_deep_doc2vec-corr-ae.h5py"
    nus.write_bytes(b"not hdf5" * 20)
    with pytest.raises(DataError, match="not an HDF5 file"):
        load_dataset("nus", data_root=tmp_path)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("coco")
    for name in DATASETS:
        assert name in str(err.value)
    assert "path=" in str(err.value)


# ----------------------------------------------------------------------------- generic

def generic_data(multilabel: bool) -> MultiModalData:
    rows = {"train": 30, "valid": 6, "test": 8}

    def labels(n: int) -> np.ndarray:
        return (RNG.random((n, 80)) < 0.05).astype(np.float32) if multilabel else ids(n, 7)

    splits = {}
    for s, n in rows.items():
        y = labels(n)
        splits[s] = Split([feats(n, 6), feats(n, 4)], [y, y])
    # Not alphabetical, so the stored `modalities` key must carry the order.
    return MultiModalData("coco", ["text", "image"], **splits)


def assert_same_data(a: MultiModalData, b: MultiModalData) -> None:
    assert a.modalities == b.modalities and a.multilabel == b.multilabel
    assert a.num_classes == b.num_classes
    for s in SPLITS:
        for xa, xb in zip(a.split(s).features, b.split(s).features):
            np.testing.assert_array_equal(xa, xb)
        for ya, yb in zip(a.split(s).labels, b.split(s).labels):
            assert ya.shape == yb.shape
            np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5", ".mat"])
def test_generic_round_trip_multilabel_80(tmp_path: Path, suffix: str) -> None:
    data = generic_data(multilabel=True)
    path = tmp_path / f"coco{suffix}"
    save_generic(path, data)
    loaded = load_generic(path)
    assert loaded.name == "coco" and loaded.multilabel and loaded.num_classes == 80
    assert_same_data(data, loaded)
    assert load_dataset("my-coco", path=path).name == "my-coco"


@pytest.mark.parametrize("suffix", [".npz", ".mat"])
def test_generic_round_trip_single_label(tmp_path: Path, suffix: str) -> None:
    data = generic_data(multilabel=False)
    save_generic(tmp_path / f"d{suffix}", data)
    loaded = load_generic(tmp_path / f"d{suffix}", name="d")
    assert_same_data(data, loaded)
    np.testing.assert_array_equal(loaded.classes, np.arange(7))


def test_generic_without_modalities_key_sorts_names(tmp_path: Path) -> None:
    arrays = {}
    for s, n in (("train", 10), ("valid", 3), ("test", 4)):
        for m, d in (("text", 4), ("image", 6), ("3d_view", 2)):
            arrays[f"{s}_{m}_x"] = feats(n, d)
            arrays[f"{s}_{m}_y"] = ids(n, 3)
    np.savez(tmp_path / "g.npz", **arrays)
    data = load_generic(tmp_path / "g.npz")
    assert data.modalities == ["3d_view", "image", "text"]
    assert data.input_dims() == [2, 6, 4]


def test_generic_missing_key(tmp_path: Path) -> None:
    save_generic(tmp_path / "g.npz", generic_data(multilabel=True))
    with np.load(tmp_path / "g.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "valid_image_y"}
    np.savez(tmp_path / "g.npz", **arrays)
    with pytest.raises(DataError, match="valid_image_y"):
        load_generic(tmp_path / "g.npz")


def test_generic_row_mismatch(tmp_path: Path) -> None:
    save_generic(tmp_path / "g.npz", generic_data(multilabel=False))
    with np.load(tmp_path / "g.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["test_text_y"] = arrays["test_text_y"][:-1]
    np.savez(tmp_path / "g.npz", **arrays)
    with pytest.raises(DataError, match="`test_text_x` \\(8 rows\\) and `test_text_y` \\(7 rows\\)"):
        load_generic(tmp_path / "g.npz")


# ----------------------------------------------------------------------------- mfeat

def raw_mfeat() -> dict[str, np.ndarray]:
    with (resources.files("drcl_fast.data") / "assets" / "mfeat.npz").open("rb") as fh:
        with np.load(fh) as npz:
            return {k: npz[k] for k in npz.files}


def test_mfeat_shapes_classes_and_split_sizes() -> None:
    data = load_dataset("mfeat")
    assert data.name == "mfeat"
    assert data.modalities == ["fou", "fac", "kar", "pix", "zer", "mor"]
    assert data.input_dims() == [76, 216, 64, 240, 47, 6]
    assert not data.multilabel and data.num_classes == 10
    np.testing.assert_array_equal(data.classes, np.arange(10))
    for s, per_class in (("train", 140), ("valid", 20), ("test", 40)):
        split = data.split(s)
        assert {len(x) for x in split.features} == {10 * per_class}
        for y in split.labels[1:]:  # row i is the same digit in every view
            np.testing.assert_array_equal(y, split.labels[0])
        np.testing.assert_array_equal(np.bincount(split.labels[0], minlength=10), [per_class] * 10)


def test_mfeat_split_indices_disjoint_and_used() -> None:
    raw = raw_mfeat()
    parts = [raw[f"split_{s}"] for s in SPLITS]
    assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts) == 2000
    data = load_mfeat()
    for s, rows in zip(SPLITS, parts):
        np.testing.assert_array_equal(data.split(s).labels[0], raw["labels"][rows])


def test_mfeat_standardised_with_training_statistics() -> None:
    raw, data = raw_mfeat(), load_mfeat()
    for v, view in enumerate(data.modalities):
        x = raw[f"x_{view}"].astype(np.float64)
        train = x[raw["split_train"]]
        constant = train.std(axis=0) == 0
        z = data.train.features[v].astype(np.float64)
        np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(z.std(axis=0), np.where(constant, 0.0, 1.0), atol=1e-4)
        # Test rows use the training mean and std, not their own.
        std = np.where(constant, 1.0, train.std(axis=0))
        expected = (x[raw["split_test"]] - train.mean(axis=0)) / std
        np.testing.assert_allclose(data.test.features[v], expected, rtol=1e-4, atol=1e-4)
        assert data.test.features[v].dtype == np.float32


# ----------------------------------------------------------------------------- errors name the file's keys
# Each released format and the generic container, with one array changed so that its rows no longer
# pair with its labels, or its width differs from the training split's: the message must name the
# keys involved (their row counts or widths), the file and the modality.

def generic_arrays() -> dict[str, np.ndarray]:
    arrays = {"modalities": np.array(["text", "image"])}
    for s, n in (("train", 30), ("valid", 6), ("test", 8)):
        y = ids(n, 7)
        arrays.update({f"{s}_text_x": feats(n, 6), f"{s}_text_y": y, f"{s}_image_x": feats(n, 4), f"{s}_image_y": y})
    return arrays


# format: (arrays, file name, writer, loader given the file's path)
FORMATS = {
    "wiki": (wiki_arrays, "wiki.mat", scipy.io.savemat, lambda p: load_dataset("wiki", data_root=p.parent)),
    "xmedia": (xmedia_arrays, "XMediaFeatures.mat", scipy.io.savemat,
               lambda p: load_dataset("xmedia", data_root=p.parent)),
    "xmedianet": (xmedianet_cells, "XMediaNet5View_Doc2Vec.mat", save_cells,
                  lambda p: load_dataset("xmedianet", data_root=p.parent)),
    "nus": (nus_arrays, "nus_wide_deep_doc2vec-corr-ae.h5py", save_h5,
            lambda p: load_dataset("nus", data_root=p.parent)),
    "INRIA-Websearch": (inria_arrays, "INRIA-Websearch.mat", scipy.io.savemat,
                        lambda p: load_dataset("INRIA-Websearch", data_root=p.parent)),
    "generic": (generic_arrays, "coco.npz", lambda p, a: np.savez(p, **a), load_generic),
}


def changed(key: str, cell: int | None, how):
    """A change of the array under `key` (of its cell `cell`, 0-based, for a cell array) by `how`."""
    def change(arrays: dict) -> None:
        if cell is None:
            arrays[key] = how(arrays[key])
        else:
            arrays[key][cell] = how(arrays[key][cell])
    return change


def fewer_rows(key: str, cell: int | None = None):
    return changed(key, cell, lambda a: a[:-3])


def wider(key: str, cell: int | None = None):
    return changed(key, cell, lambda a: np.hstack([a, np.ones((len(a), 2), np.float32)]))


@pytest.mark.parametrize("fmt, change, modality, named", [
    # rows: the features key and the labels key, with their row counts
    ("wiki", fewer_rows("train_texts_doc"), "text", ["`train_texts_doc` (27 rows)", "`train_imgs_labels` (30 rows)"]),
    ("wiki", fewer_rows("test_texts_doc"), "text", ["`test_texts_doc` (237 rows)", "`test_imgs_labels` (240 rows)"]),
    ("xmedia", fewer_rows("T_tr_BOW"), "text", ["`T_tr_BOW` (37 rows)", "`trTxtCat` (40 rows)"]),
    ("xmedia", fewer_rows("A_te"), "audio", ["`A_te` (102 rows)", "`teAudCat` (105 rows)"]),
    ("xmedianet", fewer_rows("train", 1), "text", ["`train{2}` (9 rows)", "`train_labels{2}` (12 rows)"]),
    ("xmedianet", fewer_rows("valid", 4), "video", ["`valid{5}` (2 rows)", "`valid_labels{5}` (5 rows)"]),
    ("nus", fewer_rows("train_texts"), "text", ["`train_texts` (17 rows)", "`train_imgs_labels` (20 rows)"]),
    ("INRIA-Websearch", fewer_rows("te_txt"), "text", ["`te_txt` (5 rows)", "`te_img_lab` (8 rows)"]),
    ("generic", fewer_rows("valid_image_x"), "image", ["`valid_image_x` (3 rows)", "`valid_image_y` (6 rows)"]),
    # widths: the training split's key and the one that differs, with their widths
    ("wiki", wider("test_imgs_deep"), "image", ["`train_imgs_deep` 8 wide", "`test_imgs_deep` 10 wide"]),
    ("xmedia", wider("I_te_CNN"), "image", ["`I_tr_CNN` 3 wide", "`I_te_CNN` 5 wide"]),
    ("xmedianet", wider("test", 0), "image", ["`train{1}` 3 wide", "`test{1}` 5 wide"]),
    ("nus", wider("valid_texts"), "text", ["`train_texts` 5 wide", "`valid_texts` 7 wide"]),
    ("INRIA-Websearch", wider("te_img"), "image", ["`tr_img` 6 wide", "`te_img` 8 wide"]),
    ("generic", wider("test_text_x"), "text", ["`train_text_x` 6 wide", "`test_text_x` 8 wide"]),
])
def test_mismatch_names_the_keys_the_file_and_the_modality(tmp_path: Path, fmt: str, change, modality: str,
                                                          named: list[str]) -> None:
    make, filename, write, load = FORMATS[fmt]
    arrays = make()
    change(arrays)
    path = tmp_path / filename
    write(path, arrays)
    with pytest.raises(DataError) as err:
        load(path)
    message = str(err.value)
    for text in named:
        assert text in message
    assert str(path) in message and f"modality {modality!r}" in message


def test_in_memory_mismatch_messages_name_splits_and_counts() -> None:
    data = generic_data(multilabel=False)
    short = Split([data.train.features[0][:-1], data.train.features[1]], data.train.labels)
    with pytest.raises(DataError, match="split 'train', modality 'text': 29 feature rows but 30 label rows"):
        MultiModalData("coco", data.modalities, short, data.valid, data.test)
    narrow = Split([data.test.features[0][:, :5], data.test.features[1]], data.test.labels)
    with pytest.raises(DataError, match=r"modality 'text': feature width differs between splits "
                                        r"\(train 6, valid 6, test 5\)"):
        MultiModalData("coco", data.modalities, data.train, data.valid, narrow)
