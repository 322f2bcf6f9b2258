"""The command line and the drop-in Solver produce the released files and result lines."""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from drcl_fast import Solver
from drcl_fast.cli import main
from drcl_fast.errors import ConfigError
from drcl_fast.flags import config_from_flags, str2bool
from drcl_fast.retrieval import cpp as retrieval_cpp
from drcl_fast.runtime.backends import BACKENDS
from tests.support import fails_with

TINY = ["--datasets", "mfeat", "--epochs", "3", "--hidden_shape", "32", "--output-shape", "16",
        "--batch_size", "200", "--device", "cpu"]
RESULT_LINE = re.compile(r"^test resutls@(all|50): - mean: \d\.\d{5} - detail:(\d\.\d{5},){30}$", re.M)


def test_train_writes_released_files_metrics_and_log(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len(RESULT_LINE.findall(printed)) == 2, printed
    assert "MAP@all" in printed and "query \\ gallery" in printed
    assert sio.loadmat(out / "PriorW" / "W_16X10mfeat.mat")["W"].shape == (16, 10)
    for k in range(6):
        assert (out / "PriorW" / f"W_16X10mfeat{k}.mat").is_file()
        mat = sio.loadmat(out / "features" / f"mfeat_{k}.mat")
        assert {"test_fea", "test_lab", "test_pred"} <= set(mat)
        assert mat["test_fea"].shape == (400, 16)
        np.testing.assert_allclose(mat["test_pred"].sum(axis=1), 1.0, rtol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"map_all", "map_50"}
    assert len(metrics["map_all"]["directions"]) == 30 and "fou->fac" in metrics["map_all"]["directions"]
    mean = np.mean(list(metrics["map_all"]["directions"].values()))
    assert metrics["map_all"]["mean"] == pytest.approx(mean)
    log = (out / "logging" / "mfeat.log").read_text()
    assert "RSC fou epoch 3/3: J=" in log and "J_D=" in log and "SPL mor epoch 1/3" in log
    assert len(RESULT_LINE.findall("\n".join(l.split(" - INFO - ")[-1] for l in log.splitlines()))) == 2


def test_second_run_needs_overwrite(tmp_path, capsys):
    args = ["train", *TINY, "--out", str(tmp_path), "--quiet"]
    main(args)
    assert "--overwrite" in fails_with(args, capsys)
    assert main(args + ["--overwrite"]) == 0


def test_quiet_prints_only_the_result_lines(tmp_path, capsys):
    main(["train", *TINY, "--out", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and all(RESULT_LINE.match(l) for l in lines)
    assert captured.err == ""


def test_default_dataset_is_wiki_and_its_absence_points_to_mfeat(tmp_path, capsys):
    err = fails_with(["train", "--data_root", str(tmp_path / "datasets"), "--out", str(tmp_path)], capsys)
    assert "wiki.mat" in err and str(tmp_path / "datasets") in err
    assert "--datasets mfeat" in err


def test_bad_arguments_are_reported_without_traceback(tmp_path, capsys):
    out = ["--out", str(tmp_path), "--quiet"]
    assert "--view_id 6 is out of range" in fails_with(["train", *TINY, "--view_id", "6", *out], capsys)
    assert "6 modalities" in fails_with(["train", *TINY, "--lr", "1e-3", "1e-3", *out], capsys)
    assert "prior" in fails_with(["train", *TINY, "--prior", str(tmp_path / "nope.mat"), *out], capsys)
    assert "--concurrent_units 0: must be positive" in fails_with(["train", *TINY, "--concurrent_units", "0", *out],
                                                                   capsys)


def test_released_flag_defaults_and_meanings(capsys):
    parser = argparse.ArgumentParser()
    from drcl_fast.flags import add_train_flags
    add_train_flags(parser)
    cfg = config_from_flags(parser.parse_args([]))
    assert (cfg.datasets, cfg.batch_size, cfg.output_shape, cfg.hidden_shape, cfg.epochs) == ("wiki", 1024, 2048, 4096, 200)
    assert (cfg.alpha, cfg.beta, cfg.eta, cfg.gamma, cfg.lr_SPL, cfg.seed) == (0.1, 0.1, 1.0, 0.9, 5e-4, 1)
    assert cfg.lr == [6e-6, 5e-3] and cfg.prior == "spl"           # released: --wselect True learns the prior
    assert config_from_flags(parser.parse_args(["--wselect", "True"])).prior == "spl"
    assert config_from_flags(parser.parse_args(["--wselect"])).prior == "spl"
    assert config_from_flags(parser.parse_args(["--wselect", "False"])).prior == "file"
    assert config_from_flags(parser.parse_args(["--datasets", "xmedia"])).epochs == 300
    assert config_from_flags(parser.parse_args(["--lr-spl", "1e-3", "--view-id", "1"])).lr_SPL == 1e-3
    assert config_from_flags(parser.parse_args(["--datasets", "mfeat"])).prior == "spl"
    assert config_from_flags(parser.parse_args(["--prior", "w0", "--wselect", "False"])).prior == "w0"
    assert cfg.concurrent_units == "auto"
    assert config_from_flags(parser.parse_args(["--concurrent_units", "2"])).concurrent_units == 2
    assert config_from_flags(parser.parse_args(["--concurrent-units", "auto"])).concurrent_units == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrent_units", "two"])
    assert "'two' is neither a whole number nor 'auto'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="contradicts"):
        config_from_flags(parser.parse_args(["--prior", "w0", "--wselect"]))
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def released_wiki(folder: Path) -> Path:
    """A small wiki.mat in the released layout (labels 1-based, test labels a 1 x n row), learnable by class."""
    rng = np.random.default_rng(0)
    centres, to_text = rng.normal(size=(10, 8)), rng.normal(size=(8, 6))

    def rows(n):
        y = np.arange(n) % 10
        noise = lambda d: 0.3 * rng.normal(size=(n, d))
        return y + 1, (centres[y] + noise(8)).astype(np.float32), (centres[y] @ to_text + noise(6)).astype(np.float32)

    (y_train, img_train, txt_train), (y_test, img_test, txt_test) = rows(60), rows(251)
    folder.mkdir(parents=True, exist_ok=True)
    sio.savemat(folder / "wiki.mat", dict(
        train_imgs_deep=img_train, train_texts_doc=txt_train, train_imgs_labels=y_train.reshape(-1, 1),
        test_imgs_deep=img_test, test_texts_doc=txt_test, test_imgs_labels=y_test.reshape(1, -1)))
    return folder


WIKI_TINY = ["--datasets", "wiki", "--epochs", "2", "--hidden_shape", "16", "--output_shape", "16",
             "--batch_size", "30", "--device", "cpu", "--quiet"]
WIKI_RESULT_LINE = re.compile(r"^test resutls@(all|50): - mean: \d\.\d{5} - detail:(\d\.\d{5},){2}$", re.M)


def test_bare_released_command_learns_the_prior_with_spl(tmp_path, capsys):
    """`main.py --datasets wiki` of the released code (current --wselect default True): SPL, then RSC."""
    root, out = released_wiki(tmp_path / "datasets"), tmp_path / "run"
    assert main(["train", *WIKI_TINY, "--data_root", str(root), "--out", str(out)]) == 0
    assert len(WIKI_RESULT_LINE.findall(capsys.readouterr().out)) == 2
    assert sio.loadmat(out / "PriorW" / "W_16X10wiki.mat")["W"].shape == (16, 10)
    assert all((out / "PriorW" / f"W_16X10wiki{k}.mat").is_file() for k in range(2))
    assert "SPL text epoch 2/2" in (out / "logging" / "wiki.log").read_text()
    # --wselect False reads the prior file, which the run above wrote.
    assert main(["train", *WIKI_TINY, "--data_root", str(root), "--out", str(out), "--wselect", "False",
                 "--overwrite"]) == 0
    second_run = (out / "logging" / "wiki.log").read_text().split("arguments:")[-1]
    assert "prior W read from" in second_run and "SPL text epoch" not in second_run


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_backend_name_the_parser_accepts_trains(tmp_path, capsys, backend):
    """Each name picks its own implementation where an op has one and the best available elsewhere."""
    root = released_wiki(tmp_path / "datasets")
    argv = ["train", *WIKI_TINY, "--data_root", str(root), "--out", str(tmp_path / "run"), "--backend", backend]
    unavailable = {"cpp": not retrieval_cpp.AVAILABLE, "triton": importlib.util.find_spec("triton") is None}
    if unavailable.get(backend):          # a machine without the compiled extension or Triton: a clean refusal
        assert f"backend {backend!r} is not available" in fails_with(argv, capsys)
        return
    assert main(argv) == 0
    assert len(WIKI_RESULT_LINE.findall(capsys.readouterr().out)) == 2


def test_help_lists_the_backends_from_their_one_source(capsys):
    for command in ("train", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        printed = " ".join(capsys.readouterr().out.split())
        for name, meaning in BACKENDS.items():
            assert f"{name}: {' '.join(meaning.split())}" in printed, (command, name)


def test_solver_accepts_the_released_namespace(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    released = argparse.Namespace(
        just_val=False, running_time=False, lr=[1e-3] * 6, lr_SPL=5e-4, wselect=True, batch_size=200,
        output_shape=16, alpha=0.1, beta=0.1, eta=1, gamma=0.9, datasets="mfeat", view_id=-1, gpu_id=0,
        sample_interval=1, epochs=2, seed=1)
    released.hidden_shape, released.quiet = 32, True        # optional new flags
    import logging
    maps = Solver(released, logging.getLogger("test")).train()
    assert maps.shape == (6, 6) and np.isnan(np.diag(maps)).all()
    assert (tmp_path / "PriorW" / "W_16X10mfeat.mat").is_file()          # the released code's cwd layout
    assert all((tmp_path / "features" / f"mfeat_{k}.mat").is_file() for k in range(6))
    assert len(RESULT_LINE.findall(capsys.readouterr().out)) == 2


def test_python_dash_m_entry_point(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "drcl_fast", "train", *TINY, "--epochs", "1",
                          "--out", str(tmp_path), "--quiet"], capture_output=True, text=True, cwd=repo)
    assert run.returncode == 0, run.stderr
    assert len(RESULT_LINE.findall(run.stdout)) == 2


def test_generic_multilabel_container_trains_end_to_end(tmp_path, capsys):
    from drcl_fast.data import MultiModalData, Split, save_generic
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12))

    def split(n):
        y = (rng.random((n, 5)) < 0.3).astype(np.float32)
        y[np.arange(n), rng.integers(0, 5, n)] = 1          # at least one label each
        xs = [y @ centres + 0.3 * rng.normal(size=(n, 12)), (y @ centres)[:, ::-1] + 0.3 * rng.normal(size=(n, 12))]
        return Split(xs, [y, y])

    path = tmp_path / "toy.h5"
    save_generic(path, MultiModalData("toy", ["img", "txt"], split(300), split(60), split(80)))
    main(["train", "--datasets", "toy", "--data_path", str(path), "--wselect", "--epochs", "6",
          "--hidden_shape", "32", "--output_shape", "16", "--batch_size", "50", "--lr", "1e-3", "1e-3",
          "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["map_all"]["directions"]) == {"img->txt", "txt->img"}
    assert metrics["map_all"]["mean"] > 0.6          # random multi-label ranking here is about 0.45
    assert sio.loadmat(tmp_path / "run" / "features" / "toy_0.mat")["test_lab"].shape == (80, 5)


def test_version_is_pyprojects(capsys):
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M).group(1)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"drcl-fast {version}\n"
    import drcl_fast
    assert drcl_fast.__version__ == version
    run = subprocess.run([sys.executable, "-m", "drcl_fast", "--version"], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, f"drcl-fast {version}\n"), run.stderr


@pytest.mark.parametrize("argv, near", [
    (["train", "--epocs", "3"], "--epochs"),
    (["train", *TINY, "--epocs=3"], "--epochs"),
    (["train", "--data-rot", "x"], "--data-root"),          # a dashed alias is matched as one
    (["train", "--lr_spl", "1e-3"], "--lr_SPL"),            # case aside
    (["eval", "--feature_dir", "x"], "--features_dir"),
    (["sweep", "--alpah", "0", "1"], "--alpha"),
    (["ablate", "--sedes", "1", "2"], "--seeds"),
])
def test_misspelt_flag_is_answered_by_its_command_with_the_closest_flag(capsys, argv, near):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    command = argv[0]
    assert err.startswith(f"usage: drcl-fast {command} "), err          # the command's usage, not the top one
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"drcl-fast {command}: error: unrecognized argument") and last.endswith(
        f"; did you mean {near}?"), last


def test_unknown_flag_far_from_every_flag_gets_no_guess(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--zzzzzz", "--epocs", "2"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "drcl-fast train: error: unrecognized arguments: --zzzzzz --epocs 2; did you mean --epochs?"


def test_unknown_dataset_names_the_option_of_its_caller(tmp_path, capsys):
    """The command line's spelling on the command line (--data_path), Python's in Python (path=, data_path=)."""
    from drcl_fast import DRCL, load_dataset
    from drcl_fast.data import DataError
    for command, more in (("train", []), ("sweep", ["--alpha", "0", "1"]), ("ablate", [])):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--datasets", "mnist", *more, "--out", str(tmp_path / command), "--quiet"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"drcl-fast {command}: error: unknown dataset 'mnist'"), err
        assert "pass --data_path FILE" in err and "path=" not in err
    with pytest.raises(DataError) as python_error:
        load_dataset("mnist")
    assert "pass path=FILE" in str(python_error.value) and "--data_path" not in str(python_error.value)
    with pytest.raises(DataError, match="pass data_path=FILE"):
        DRCL(out=str(tmp_path / "api")).fit("mnist")
