"""Readers for the five feature files released with DRCL.

Each reader takes a data root and looks for its file at {data_root}/{file},
then at {data_root}/{Subfolder}/{file}, the layout of the released `datasets/`
folder. Labels are kept as the files give them (class ids in any base, or 0/1
matrices); MultiModalData maps class ids onto the sorted distinct train ids.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from . import validate
from .container import SPLITS, DataError, MultiModalData, Split
from .generic import ArrayFile, read_split
from .source import Source, Sources, cell_key

IMAGE_TEXT = ["image", "text"]
FIVE_VIEWS = ["image", "text", "audio", "3d", "video"]
SUGGESTION = "pass --data_root DIR, or try the bundled data with --datasets mfeat"


def locate(data_root: str | Path, dataset: str, filename: str, subfolder: str) -> Path:
    """The dataset's file, directly under data_root or in its released subfolder."""
    root = Path(data_root)
    candidates = [root / filename, root / subfolder / filename]
    for path in candidates:
        if path.is_file():
            return path
    looked = " or ".join(str(p) for p in candidates)
    raise DataError(f"dataset {dataset!r} needs {filename}, which is not at {looked}; {SUGGESTION}")


def _open(data_root: str | Path, dataset: str, filename: str, subfolder: str) -> ArrayFile:
    return ArrayFile(locate(data_root, dataset, filename, subfolder), dataset)


def _image_text(f: ArrayFile, image: str, text: str, labels: str) -> Split:
    # These files label only the images; each text is paired with its image, so shares its label.
    return read_split(f, [(image, labels), (text, labels)])


def _cut(split: Split, counts: list[int], where: str, modalities: list[str]) -> tuple[Split, Split]:
    """Each modality's first counts[i] rows, and the rest; the released splits need both."""
    for i, (m, n) in enumerate(zip(modalities, counts)):
        at, sources = f"{where}, modality {m!r}", split.source(i)
        # Before cutting, so that a mismatch is reported for the whole arrays the file holds.
        validate.check_rows(split.features[i], split.labels[i], at, sources)
        rows = validate.row_count(split.features[i])
        if rows <= n:
            raise DataError(f"{at}: {sources.features} has {rows} rows in {sources.features.path}, but the "
                            f"released split takes the first {n} and needs rows after them")

    def part(head: bool) -> Split:
        cut = lambda a, n: a[:n] if head else a[n:]
        span = lambda a, n: f"rows 1-{n}" if head else f"rows {n + 1}-{len(a)}"
        return Split([cut(x, n) for x, n in zip(split.features, counts)],
                     [cut(y, n) for y, n in zip(split.labels, counts)],
                     [Sources(s.features.part(span(x, n)), s.labels.part(span(x, n)))
                      for s, x, n in zip(split.sources, split.features, counts)])

    return part(True), part(False)


# The file's test arrays, before a reader cuts them into the valid and test splits.
CUT_WHERE = "dataset {!r}, the file's test rows (split into valid and test)"

WIKI_VALID_ROWS = 231


def load_wiki(data_root: str | Path = "datasets") -> MultiModalData:
    """Wikipedia (wiki.mat): image CNN and text doc2vec features.

    As in the released code, validation is the first 231 test pairs and test the rest.
    """
    with _open(data_root, "wiki", "wiki.mat", "Wiki") as f:
        train, test = (_image_text(f, f"{s}_imgs_deep", f"{s}_texts_doc", f"{s}_imgs_labels")
                       for s in ("train", "test"))
    valid, test = _cut(test, [WIKI_VALID_ROWS] * 2, CUT_WHERE.format("wiki"), IMAGE_TEXT)
    return MultiModalData("wiki", IMAGE_TEXT, train, valid, test)

# modality: train features, test features, train labels, test labels, test rows
# (the rest of each modality's test rows is the validation set).
XMEDIA_KEYS = {
    "image": ("I_tr_CNN", "I_te_CNN", "trImgCat", "teImgCat", 500),
    "text": ("T_tr_BOW", "T_te_BOW", "trTxtCat", "teTxtCat", 500),
    "audio": ("A_tr", "A_te", "trAudCat", "teAudCat", 100),
    "3d": ("d3_tr", "d3_te", "tr3dCat", "te3dCat", 50),
    "video": ("V_tr_CNN", "V_te_CNN", "trVidCat", "teVidCat", 87),
}


def load_xmedia(data_root: str | Path = "datasets") -> MultiModalData:
    """XMedia (XMediaFeatures.mat): five modalities, each with its own samples, 1-based class ids.

    As in the released code, test is the first 500/500/100/50/87 test rows of
    image/text/audio/3d/video and validation the remaining test rows.
    """
    keys = list(XMEDIA_KEYS.values())
    with _open(data_root, "xmedia", "XMediaFeatures.mat", "XMedia") as f:
        train = read_split(f, [(k[0], k[2]) for k in keys])
        test = read_split(f, [(k[1], k[3]) for k in keys])
    test, valid = _cut(test, [k[4] for k in keys], CUT_WHERE.format("xmedia"), list(XMEDIA_KEYS))
    return MultiModalData("xmedia", list(XMEDIA_KEYS), train, valid, test)


def load_xmedianet(data_root: str | Path = "datasets") -> MultiModalData:
    """XMediaNet (XMediaNet5View_Doc2Vec.mat): five views with doc2vec text.

    Each split is a 1x5 MATLAB cell array (`train`, `train_labels`, `valid`, ...)
    that does not name its views. They are taken to be image, text, audio, 3d,
    video in that order, as in XMedia; the released code relies only on cell 0
    being the images and cell 1 the texts.
    """
    with _open(data_root, "xmedianet", "XMediaNet5View_Doc2Vec.mat", "XMediaNet") as f:
        splits = {s: _cell_split(f, s) for s in SPLITS}
    return MultiModalData("xmedianet", FIVE_VIEWS, **splits)


def _cell_split(f: ArrayFile, split: str) -> Split:
    """Cell v of `split` and of `{split}_labels` as view v, each named `key{v + 1}` in errors."""
    keys = (split, f"{split}_labels")
    sources = [Sources(*(Source(f.path, cell_key(key, v)) for key in keys)) for v in range(len(FIVE_VIEWS))]
    return Split(_cells(f, keys[0]), _cells(f, keys[1]), sources)


def _cells(f: ArrayFile, key: str) -> list[np.ndarray]:
    cells = f[key]
    if cells.dtype != object or cells.size != len(FIVE_VIEWS):
        raise DataError(f"{f.path}: {key!r} should be a 1x{len(FIVE_VIEWS)} cell array, "
                        f"found a {cells.dtype} array of shape {cells.shape}")
    return [np.asarray(c) for c in cells.ravel()]


def load_nus(data_root: str | Path = "datasets") -> MultiModalData:
    """NUS-WIDE (nus_wide_deep_doc2vec-corr-ae.h5py, HDF5): image CNN and text features."""
    with _open(data_root, "nus", "nus_wide_deep_doc2vec-corr-ae.h5py", "NUS-WIDE") as f:
        splits = {s: _image_text(f, f"{s}_imgs_deep", f"{s}_texts", f"{s}_imgs_labels") for s in SPLITS}
    return MultiModalData("nus", IMAGE_TEXT, **splits)


def load_inria(data_root: str | Path = "datasets") -> MultiModalData:
    """INRIA-Websearch (INRIA-Websearch.mat): image and text features."""
    prefixes = {"train": "tr", "valid": "val", "test": "te"}
    with _open(data_root, "INRIA-Websearch", "INRIA-Websearch.mat", "INRIA-Websearch") as f:
        splits = {s: _image_text(f, f"{p}_img", f"{p}_txt", f"{p}_img_lab") for s, p in prefixes.items()}
    return MultiModalData("INRIA-Websearch", IMAGE_TEXT, **splits)


RELEASED: dict[str, Callable[[str | Path], MultiModalData]] = {
    "wiki": load_wiki,
    "xmedia": load_xmedia,
    "xmedianet": load_xmedianet,
    "nus": load_nus,
    "INRIA-Websearch": load_inria,
}
