"""Which RSC rate each modality trains with, where it comes from, and that the run says so (issue 20, item 3)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from drcl_fast.cli import main
from drcl_fast.config import DEFAULT_LR, RELEASED_DATASETS, RELEASED_LR, DRCLConfig
from drcl_fast.data import MultiModalData, save_generic
from drcl_fast.data.released import RELEASED
from drcl_fast.errors import ConfigError
from drcl_fast.flags import add_train_flags, config_from_flags
from drcl_fast.training.trainer import fit

TINY = ["--epochs", "2", "--hidden_shape", "32", "--output_shape", "16", "--batch_size", "200", "--device", "cpu"]


def flags(*argv: str) -> DRCLConfig:
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    return config_from_flags(parser.parse_args(list(argv)))


def test_one_lr_value_stands_for_every_modality():
    cfg = flags("--datasets", "mfeat", "--lr", "3e-3")
    assert cfg.lr == 3e-3 and cfg.learning_rates(6) == [3e-3] * 6
    assert flags("--datasets", "mfeat", "--lr", "auto").learning_rates(6) == ["auto"] * 6
    assert flags("--datasets", "wiki", "--lr", "1e-4", "auto").learning_rates(2) == [1e-4, "auto"]
    assert DRCLConfig(datasets="coco", lr=1e-3).learning_rates(3) == [1e-3] * 3      # the Python API
    assert DRCLConfig.preset("mfeat", lr=2e-3).rate_sources(6) == [(2e-3, "--lr (one value for every modality)")] * 6


def test_released_names_keep_the_released_rates():
    assert set(RELEASED_DATASETS) == set(RELEASED)
    assert DRCLConfig.preset("wiki").rate_sources(2) == [(6e-6, "published for wiki"), (5e-3, "published for wiki")]
    assert DRCLConfig.preset("xmedia").learning_rates(5) == [8e-4, 3e-4, 8e-4, 3e-3, 4e-4]
    for name in ("xmedianet", "nus", "INRIA-Websearch"):   # no published rates: the released list, by view
        sources = DRCLConfig.preset(name).rate_sources(2)
        assert [lr for lr, _ in sources] == list(RELEASED_LR[:2])
        assert all(s == f"the released default list (no rates published for {name})" for _, s in sources)
    assert DRCLConfig.preset("mfeat").rate_sources(6) == [(1e-3, "the mfeat preset")] * 6
    with pytest.raises(ConfigError, match="one rate for every modality, or one per modality"):
        DRCLConfig.preset("nus").learning_rates(6)


@pytest.mark.parametrize("views", [2, 6])
def test_other_data_gets_the_default_for_every_modality(views):
    assert DEFAULT_LR == "auto"       # measured: docs/lr_search.md, "A default for other data"
    sources = DRCLConfig.preset("coco").rate_sources(views)
    assert sources == [("auto", "default for data without published rates (searched)")] * views
    assert DRCLConfig.preset("coco", lr=[1e-4, "auto"]).rate_sources(2) == [(1e-4, "--lr"),
                                                                           ("auto", "--lr auto (searched)")]


def test_one_lr_value_trains_mfeat_and_the_log_says_where_each_rate_comes_from(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--datasets", "mfeat", "--lr", "1e-3", *TINY, "--out", str(out)]) == 0
    console = capsys.readouterr().err
    log = (out / "logging" / "mfeat.log").read_text()
    for text in (console, log):
        assert "RSC learning rates:" in text
        for k, name in enumerate(("fou", "fac", "kar", "pix", "zer", "mor")):
            assert f"modality {k} ({name}): 0.001  --lr (one value for every modality)" in text


def test_a_container_without_published_rates_searches_its_rates_and_says_so(mfeat, tmp_path, capsys):
    path = tmp_path / "digits.npz"
    save_generic(path, MultiModalData("digits", mfeat.modalities, mfeat.train, mfeat.valid, mfeat.test))
    out = tmp_path / "out"
    assert main(["train", "--datasets", "digits", "--data_path", str(path), *TINY, "--out", str(out)]) == 0
    console, log = capsys.readouterr().err, (out / "logging" / "digits.log").read_text()
    for text in (console, log):
        assert text.count("auto  default for data without published rates (searched)") == 6
        assert "give --lr to skip it" in text
        assert text.count("lr criterion after epochs") == 6      # each modality's search table
    assert sorted(json.loads((out / "lr_search.json").read_text())) == sorted(mfeat.modalities)


def test_the_default_trains_as_lr_auto(mfeat, tiny_config, tmp_path):
    data = MultiModalData("digits", mfeat.modalities, mfeat.train, mfeat.valid, mfeat.test).select([0, 3])
    base = tiny_config.replace(datasets="digits", lr=None, epochs=2, checkpoint_every=0, prior="w0")
    default = fit(data, base.replace(out=str(tmp_path / "a")), progress=False)
    given = fit(data, base.replace(out=str(tmp_path / "b"), lr=DEFAULT_LR), progress=False)
    for k in (0, 1):
        np.testing.assert_array_equal(default.rsc[k].test_embeddings, given.rsc[k].test_embeddings)


def test_more_rates_than_one_must_match_the_modalities(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--datasets", "mfeat", "--lr", "1e-3", "1e-3", *TINY, "--quiet", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--lr gives 2 learning rate(s) for the 6 modalities" in err
    assert "pass one for every modality, or exactly one per modality" in err
