"""The modern API: presets follow the fitted data, a fit leaves global state as it found it, imports stay narrow."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drcl_fast import DRCL, DRCLConfig
from drcl_fast.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(epochs=1, hidden_shape=16, output_shape=16, batch_size=200, quiet=True, device="cpu")
TWO_VIEWS = dict(TINY, lr=[1e-3, 1e-3], checkpoint_every=0)   # for mfeat.select([i, j])


def test_fit_without_a_config_applies_the_fitted_datasets_preset(tmp_path, mfeat):
    model = DRCL(out=str(tmp_path), **TWO_VIEWS).fit(mfeat.select([0, 5]))
    assert model.config == DRCLConfig.preset("mfeat", out=str(tmp_path), **TWO_VIEWS)
    assert {p.name for p in (tmp_path / "features").iterdir()} == {"mfeat_0.mat", "mfeat_1.mat"}
    assert (tmp_path / "PriorW" / "W_16X10mfeat.mat").is_file()


def test_fit_by_name_without_a_config(tmp_path):
    model = DRCL(out=str(tmp_path), **TINY, view_id=0, checkpoint_every=0).fit("mfeat")
    assert model.config == DRCLConfig.preset("mfeat", out=str(tmp_path), **TINY, view_id=0, checkpoint_every=0)
    assert (tmp_path / "features" / "mfeat_0.mat").is_file()


def test_a_config_made_for_another_dataset_is_refused_before_anything_is_written(tmp_path, mfeat):
    with pytest.raises(ConfigError, match=r"'wiki'.*'mfeat'.*DRCLConfig.preset\('mfeat'"):
        DRCL(DRCLConfig(out=str(tmp_path), **TINY)).fit(mfeat)
    with pytest.raises(ConfigError, match="DRCLConfig.preset"):
        DRCL(DRCLConfig(out=str(tmp_path), **TINY)).fit("mfeat")
    assert not any(tmp_path.iterdir())


class _StopTraining(Exception):
    pass


@pytest.mark.parametrize("before", [False, True])
def test_deterministic_fit_restores_the_callers_mode(tmp_path, mfeat, monkeypatch, before):
    """On for the run, even one that fails; the caller's mode and cuBLAS setting after it."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []

    def failing_run(*args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        raise _StopTraining

    monkeypatch.setattr("drcl_fast.training.trainer._fit", failing_run)
    torch.use_deterministic_algorithms(before, warn_only=before)
    try:
        config = DRCLConfig.preset("mfeat", out=str(tmp_path), deterministic=True, **TWO_VIEWS)
        with pytest.raises(_StopTraining):
            DRCL(config).fit(mfeat.select([0, 1]))
        assert seen == [(True, ":4096:8")]
        assert torch.are_deterministic_algorithms_enabled() is before
        assert torch.is_deterministic_algorithms_warn_only_enabled() is before
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_whole_deterministic_fit_leaves_the_mode_off(tmp_path, mfeat):
    config = DRCLConfig.preset("mfeat", out=str(tmp_path), deterministic=True, **TWO_VIEWS)
    DRCL(config).fit(mfeat.select([0, 1]))
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("site", [True, False], ids=["installed", "source-tree"])
def test_only_kernels_is_mapped_into_the_package(site):
    """drcl_fast.kernels is the top-level kernels/; tests/, bench/ and setup.py are not drcl_fast.*."""
    script = ("import importlib.util as u, sys; sys.path.insert(0, sys.argv[1]); import drcl_fast; "
              "print(u.find_spec('drcl_fast.kernels').origin, u.find_spec('drcl_fast.kernels.gce').origin); "
              "print([u.find_spec('drcl_fast.' + n) for n in ('tests', 'bench', 'setup', 'csrc')])")
    # Without site-packages (-S) only the source tree can supply drcl_fast.kernels.
    done = subprocess.run([sys.executable, *([] if site else ["-S"]), "-c", script, str(ROOT)], cwd="/",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    origins, others = done.stdout.splitlines()
    assert origins.split() == [str(ROOT / "kernels" / "__init__.py"), str(ROOT / "kernels" / "gce.py")]
    assert others == "[None, None, None, None]"
