"""Every bad input stops before training with the package's own error and a message that helps.

docs/errors.md lists these cases; each has a test here.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.io as sio

from drcl_fast.cli import main
from drcl_fast.data import MultiModalData, Split, load_dataset, load_generic, save_generic
from drcl_fast.errors import BackendError, ConfigError, DataError, DataWarning, OutputError
from drcl_fast.training.trainer import fit


def toy(train_y=None, test_y=None, width=(4, 3), rows=(12, 6, 6), **change) -> MultiModalData:
    """Two modalities, three classes; `change` replaces arrays: {"test_x1": array, ...}."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "valid", "test"), rows):
        y = np.arange(n) % 3
        for m, d in enumerate(width):
            arrays[f"{split}_x{m}"] = rng.normal(size=(n, d))
            arrays[f"{split}_y{m}"] = y
    arrays.update(change)
    split = lambda s: Split([arrays[f"{s}_x0"], arrays[f"{s}_x1"]], [arrays[f"{s}_y0"], arrays[f"{s}_y1"]])
    return MultiModalData("toy", ["img", "txt"], split("train"), split("valid"), split("test"))


def test_a_valid_toy_dataset_loads():
    data = toy()
    assert data.num_classes == 3 and data.input_dims() == [4, 3]


@pytest.mark.parametrize("change, message", [
    ({"train_y0": np.arange(11) % 3}, "12 feature rows but 11 label rows"),
    ({"test_x1": np.zeros((6, 5))}, "feature width differs between splits (train 3, valid 3, test 5)"),
    ({"valid_x0": np.full((6, 4), np.nan)}, "6 row(s) hold NaN or Inf (first: row 0)"),
    ({"test_x1": np.array([[0, 0, np.inf]] + [[1, 1, 1]] * 5)}, "1 row(s) hold NaN or Inf"),
    ({"train_y1": np.array([0, 1, 2, -1] * 3)}, "class ids must not be negative, found [-1]"),
    ({"train_y0": np.array([0, 1, 2.5] * 4)}, "class ids must be integers, found [2.5"),
    ({"train_y0": np.eye(3)[np.arange(12) % 3] * 2}, "only 0 and 1"),
    ({"train_y0": np.zeros(12, dtype=int), "train_y1": np.zeros(12, dtype=int),
      "valid_y0": np.zeros(6, dtype=int), "valid_y1": np.zeros(6, dtype=int),
      "test_y0": np.zeros(6, dtype=int), "test_y1": np.zeros(6, dtype=int)}, "one class only"),
    ({"test_y1": np.array([0, 1, 2, 7, 0, 1])}, "class id(s) [7] occur here but never in training"),
    ({"valid_x0": np.zeros((0, 4)), "valid_y0": np.zeros(0)}, "the split is empty"),
    ({"train_x0": np.array([["a"] * 4] * 12)}, "features are not numeric"),
    ({"train_y1": np.eye(3)[np.arange(12) % 3]}, "labels differ in kind"),
])
def test_bad_arrays_are_refused_with_a_message_naming_the_place(change, message):
    with pytest.raises(DataError) as err:
        toy(**change)
    assert message in str(err.value)
    assert "dataset 'toy'" in str(err.value)


def test_all_zero_rows_only_warn():
    with pytest.warns(DataWarning, match="2 all-zero feature row"):
        toy(train_x0=np.vstack([np.zeros((2, 4)), np.ones((10, 4))]))


def test_file_problems(tmp_path):
    with pytest.raises(DataError, match="not at .*wiki.mat.*--datasets mfeat"):
        load_dataset("wiki", data_root=tmp_path)
    (tmp_path / "wiki.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DataError, match="cannot read .*wiki.mat"):
        load_dataset("wiki", data_root=tmp_path)
    sio.savemat(tmp_path / "wiki.mat", {"train_imgs_deep": np.zeros((3, 2))})
    with pytest.raises(DataError, match="has no key 'train_.*keys present: \\['train_imgs_deep'\\]"):
        load_dataset("wiki", data_root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'wikki'"):
        load_dataset("wikki")
    path = tmp_path / "toy.npz"
    save_generic(path, toy())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_generic(path)


def run_config(tmp_path, data=None, **changes):
    from drcl_fast.config import DRCLConfig
    cfg = DRCLConfig(datasets="toy", epochs=1, batch_size=4, hidden_shape=8, output_shape=8, lr=[1e-3, 1e-3],
                     out=str(tmp_path / "out"), quiet=True, device="cpu", prior="w0").replace(**changes)
    return fit(data or toy(), cfg, progress=False)


@pytest.mark.parametrize("changes, error, message", [
    ({"batch_size": 13}, ConfigError, "12 training rows, fewer than one batch of --batch_size 13"),
    ({"lr": [1e-3]}, ConfigError, "--lr gives 1 learning rate(s) for the 2 modalities"),
    ({"view_id": 2}, ConfigError, "--view_id 2 is out of range"),
    ({"gamma": 1.5}, ConfigError, "--gamma 1.5"),
    ({"output_shape": 2}, ConfigError, "smaller than the 3 classes"),
    ({"prior": "w0", "released_prior_slip": True}, ConfigError, "--released_prior_slip only apply"),
])
def test_arguments_that_cannot_work_are_refused_before_training(tmp_path, changes, error, message):
    with pytest.raises(error) as err:
        run_config(tmp_path, **changes)
    assert message in str(err.value)
    assert not (tmp_path / "out" / "features").exists()   # nothing trained, nothing written


def test_triton_on_cpu_tensors_without_the_interpreter_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="backend 'triton' needs CUDA tensors"):
        run_config(tmp_path, backend="triton")
    assert not (tmp_path / "out" / "features").exists()


def test_one_modality_cannot_do_cross_modal_retrieval(tmp_path):
    with pytest.raises(ConfigError, match="needs at least two"):
        run_config(tmp_path, data=toy().select([0]), lr=[1e-3])


def test_prior_file_of_the_wrong_shape(tmp_path):
    path = tmp_path / "W.mat"
    sio.savemat(path, {"W": np.zeros((8, 4))})
    with pytest.raises(DataError, match="holds a 8 x 4 matrix; this run needs D x C = 8 x 3"):
        run_config(tmp_path, prior=str(path))


def test_output_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="is not writable"):
        run_config(tmp_path, out=str(blocker / "out"))


def test_gpu_device_without_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU error cannot happen")
    with pytest.raises(ConfigError, match="no CUDA device"):
        run_config(tmp_path, device="cuda")


@pytest.mark.parametrize("flags, message", [
    (["--prior", "w0", "--wselect", "True"], "contradicts --wselect"),
    (["--resume", "--overwrite"], "give one of them"),
    (["--datasets", "nonesuch"], "unknown dataset 'nonesuch'"),
    (["--checkpoint_every", "-1"], "--checkpoint_every -1"),
])
def test_contradictory_or_unknown_flags_on_the_command_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--datasets", "mfeat", "--out", str(tmp_path), "--quiet", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_valid_data_raises_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        toy()


def multilabel_toy(unlabelled: dict[str, int]) -> MultiModalData:
    """toy() with 0/1 label matrices; unlabelled {"train_y1": 12, ...} empties that many first rows."""
    change = {}
    for split, n in zip(("train", "valid", "test"), (12, 6, 6)):
        for m in range(2):
            y = np.eye(3)[np.arange(n) % 3]
            y[:unlabelled.get(f"{split}_y{m}", 0)] = 0
            change[f"{split}_y{m}"] = y
    return toy(**change)


@pytest.mark.parametrize("unlabelled, error, message", [
    ({"train_y1": 12}, DataError, "modality 1 (txt): all 12 training rows have no label"),
    ({"valid_y0": 6}, DataError, "modality 0 (img): all 6 validation rows have no label"),
    ({"train_y0": 9}, ConfigError, "modality 0 (img) has 3 training rows with a label (9 of 12 have none), "
                                   "fewer than one batch of --batch_size 4"),
])
def test_too_few_labelled_rows_are_refused_before_training(tmp_path, unlabelled, error, message):
    with pytest.raises(error) as err:
        run_config(tmp_path, data=multilabel_toy(unlabelled))
    assert message in str(err.value)
    assert not (tmp_path / "out" / "features").exists()
