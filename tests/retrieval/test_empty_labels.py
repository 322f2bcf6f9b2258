"""Multi-label data with empty label rows (items with none of the classes, as in MS-COCO and NUS-WIDE).

Train and valid rows without a label are left out of training, SPL scoring and model
selection, per modality; test rows are all kept; one DataWarning says how many.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data import MultiModalData, Split, load_generic, save_generic
from drcl_fast.errors import DataWarning, NonFiniteLossError
from drcl_fast.training.modality import ModalityData
from drcl_fast.training.spl import initial_prior, learn_prior
from drcl_fast.training.trainer import fit

CLASSES = 10
ROWS = {"train": 240, "valid": 60, "test": 60}
# Empty label rows per split, per modality (image, text): a few percent of every split.
EMPTY = {"train": (8, 6), "valid": (2, 1), "test": (3, 2)}


def multilabel_data(seed: int = 0) -> MultiModalData:
    """Two modalities whose features follow their 1-3 labels; EMPTY rows have none."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, 12))
    splits = {}
    for s, n in ROWS.items():
        features, labels = [], []
        for m, (width, empty) in enumerate(zip((12, 8), EMPTY[s])):
            y = np.zeros((n, CLASSES), np.float32)
            for i in range(n):
                y[i, rng.choice(CLASSES, size=rng.integers(1, 4), replace=False)] = 1
            y[rng.choice(n, size=empty, replace=False)] = 0
            x = y @ centres[:, :width] + 0.5 * rng.normal(size=(n, width))
            features.append(x)
            labels.append(y)
        splits[s] = Split(features, labels)
    return MultiModalData("coco-tiny", ["image", "text"], **splits)


def empty_label_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DataWarning) and "no label" in str(w.message)]


@pytest.mark.parametrize("backend", ["torch", "restructured", "auto", pytest.param("triton", marks=pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed (make test requires it)"))])
def test_training_leaves_out_empty_label_rows_and_keeps_every_test_row(tmp_path: Path, backend: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "coco-tiny.npz"
    save_generic(path, multilabel_data())
    data = load_generic(path)
    cfg = DRCLConfig(datasets="coco-tiny", epochs=2, spl_epochs=2, batch_size=40, hidden_shape=16,
                     output_shape=16, lr=[1e-3, 1e-3], out=str(tmp_path / "out"), quiet=True, device="cpu",
                     backend=backend)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", logger="drcl_fast.epochs"):
        warnings.simplefilter("always")
        result = fit(data, cfg, progress=False)

    [message] = empty_label_warnings(caught)
    assert "dataset 'coco-tiny'" in message
    assert "image: train 8, valid 2, test 3" in message and "text: train 6, valid 1, test 2" in message
    assert "test rows are kept" in message
    epoch_lines = [r.getMessage() for r in caplog.records if r.name == "drcl_fast.epochs"]
    assert len(epoch_lines) == 2 * (cfg.spl_epochs + cfg.epochs)
    assert not [line for line in epoch_lines if "nan" in line or "inf" in line], epoch_lines
    for rsc in result.rsc.values():
        assert all(math.isfinite(v) for record in rsc.history for v in record.values())
    assert all(math.isfinite(s) for r in result.spl for s in r.scores.values())
    assert all(math.isfinite(m.mean) for m in result.metrics)
    for k, rsc in result.rsc.items():  # every test row kept, the unlabelled ones included
        assert rsc.test_embeddings.shape == (ROWS["test"], 16)
        np.testing.assert_array_equal(rsc.test_labels, data.test.labels[k])
    for s in ("train", "valid"):  # the user's data is not altered
        assert [len(x) for x in data.split(s).features] == [ROWS[s]] * 2


def test_modality_tensors_leave_out_unlabelled_train_and_valid_rows_only() -> None:
    data = multilabel_data()
    for k in range(2):
        m = ModalityData.from_dataset(data, k, torch.device("cpu"))
        labelled = {s: data.split(s).labels[k].any(axis=1) for s in ("train", "valid")}
        torch.testing.assert_close(m.train_x, torch.from_numpy(data.train.features[k][labelled["train"]]))
        torch.testing.assert_close(m.valid_t, torch.from_numpy(data.valid.labels[k][labelled["valid"]]))
        assert len(m.train_t) == ROWS["train"] - EMPTY["train"][k] and bool((m.train_t.sum(1) > 0).all())
        assert len(m.valid_x) == ROWS["valid"] - EMPTY["valid"][k]
        assert len(m.test_x) == ROWS["test"] and len(m.test_labels) == ROWS["test"]


def test_spl_on_unlabelled_rows_says_so_instead_of_blaming_the_learning_rate() -> None:
    data = multilabel_data()
    m = ModalityData.from_dataset(data, 0, torch.device("cpu"))
    m.train_t[3] = 0  # as if a caller built the tensors itself, without leaving such rows out
    with pytest.raises(NonFiniteLossError) as err:
        learn_prior(m, initial_prior(16, CLASSES, 1), epochs=1, batch_size=len(m.train_x), lr=1e-3,
                    hidden_dim=8, sample_interval=1, seed=1, backend="torch", progress=False)
    message = str(err.value)
    assert "1 training row(s) with no label" in message and "modality 'image'" in message
    assert "lr_SPL" not in message
