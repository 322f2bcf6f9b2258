"""`--lr auto`: the learning-rate search per modality (drcl_fast/training/lr_search.py) and its place in a run."""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from drcl_fast.data.container import MultiModalData, Split
from drcl_fast.errors import ConfigError
from drcl_fast.training import lr_search
from drcl_fast.training.trainer import fit
from tests.support import REPO



@pytest.fixture
def auto_config(tiny_config):
    """Two of the six modalities searched, the prior W0: SPL plays no part in the search."""
    return tiny_config.replace(epochs=8, lr=[1e-3, "auto", 1e-3, 1e-3, 1e-3, "auto"], checkpoint_every=0, prior="w0")


def test_round_ends_split_the_epochs_and_land_on_validated_epochs():
    assert lr_search.round_ends(200) == [25, 50, 100]
    assert lr_search.round_ends(8) == [1, 2, 4]
    assert lr_search.round_ends(2) == [1]
    assert lr_search.round_ends(40, sample_interval=3) == [6, 12, 21]


def test_the_chosen_rate_trains_exactly_as_a_plain_run_at_that_rate(mfeat, auto_config, tmp_path):
    searched = fit(mfeat, auto_config.replace(out=str(tmp_path / "auto")), progress=False)
    chosen = {k: r["chosen"] for k, r in searched.lr_search.items()}
    assert sorted(chosen) == [1, 5]
    for r in searched.lr_search.values():   # the grid, and any rate beyond it that a leader at its end added
        tried = [c["lr"] for c in r["candidates"]]
        assert r["chosen"] in tried and set(lr_search.GRID) <= set(tried) and tried == sorted(tried)
        assert set(tried) - set(lr_search.GRID) == set(r["extended"])
    plain_rates = [chosen.get(k, 1e-3) for k in range(6)]
    plain = fit(mfeat, auto_config.replace(out=str(tmp_path / "plain"), lr=plain_rates), progress=False)
    for k in range(6):
        np.testing.assert_array_equal(searched.rsc[k].test_embeddings, plain.rsc[k].test_embeddings)
        assert searched.rsc[k].test_embeddings.shape[0] == mfeat.test.features[k].shape[0]
    assert searched.metrics[0].directions == plain.metrics[0].directions
    weights = "model/weights.safetensors"   # the searched run writes the plain run's model, and its rates
    assert (tmp_path / "auto" / weights).read_bytes() == (tmp_path / "plain" / weights).read_bytes()
    assert [e["lr"] for e in json.loads((tmp_path / "auto" / "model" / "manifest.json").read_text())["encoders"]] \
        == plain_rates
    saved = json.loads((tmp_path / "auto" / "lr_search.json").read_text())
    assert sorted(saved) == ["fac", "mor"]
    fac = saved["fac"]
    assert fac["chosen"] == chosen[1] and fac["rounds"] == [1, 2, 4] and fac["criterion"] == "val_loss"
    assert [c["lr"] for c in fac["candidates"] if c["joined"] == 0 and c["lr"] in lr_search.GRID] == \
        list(lr_search.GRID)
    # Seven candidates to epoch 1, four of them on to 2, two of those on to 4; a rate beyond the grid
    # trains from the start to the end of the round it joined in, then goes on like the others.
    reached = [min(c["joined"] + len(c["scores"]) + c["diverged"], 3) for c in fac["candidates"]]
    assert fac["epochs_trained"] == sum([1, 2, 4][r - 1] for r in reached)
    assert reached.count(3) == 2 + sum(c["joined"] == 2 for c in fac["candidates"])
    assert fac["epochs_trained"] == 7 * 1 + 4 * 1 + 2 * 2 or fac["extended"]
    assert searched.train_flops > plain.train_flops


def test_the_test_split_plays_no_part_in_the_choice(mfeat, auto_config, tmp_path):
    g = np.random.default_rng(0)
    shuffled = MultiModalData(mfeat.name, mfeat.modalities, mfeat.train, mfeat.valid,
                              Split([g.permutation(x) * 3.0 for x in mfeat.test.features], mfeat.test.labels))
    cfg = auto_config.replace(epochs=4)
    a = fit(mfeat, cfg.replace(out=str(tmp_path / "a")), progress=False).lr_search
    b = fit(shuffled, cfg.replace(out=str(tmp_path / "b")), progress=False).lr_search
    assert {k: r["candidates"] for k, r in a.items()} == {k: r["candidates"] for k, r in b.items()}


def test_the_retrieval_criterion_ranks_by_validation_map(mfeat, auto_config, tmp_path):
    r = fit(mfeat, auto_config.replace(lr_criterion="val_map", epochs=4, lr=[1e-3, "auto", 1e-3, 1e-3, 1e-3, 1e-3]),
            progress=False).lr_search[1]
    assert r["criterion"] == "val_map"
    scores = [s for c in r["candidates"] for s in c["scores"]]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1


def test_an_interrupted_search_resumes_to_the_uninterrupted_result(mfeat, auto_config, tmp_path, monkeypatch):
    cfg = auto_config.replace(checkpoint_every=1, out=str(tmp_path / "killed"), epochs=4)
    real, rounds = lr_search._advance, []

    def interrupted(candidate, *args, **kwargs):   # a Ctrl-C in the second (last) round of modality 1
        rounds.append(candidate.lr)
        if len(rounds) == 7 + 2:
            raise KeyboardInterrupt
        return real(candidate, *args, **kwargs)

    monkeypatch.setattr(lr_search, "_advance", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(mfeat, cfg, progress=False)
    calls = []
    monkeypatch.setattr(lr_search, "_advance", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    resumed = fit(mfeat, cfg.replace(resume=True), progress=False)
    resumed_calls = len(calls)
    plain = fit(mfeat, auto_config.replace(out=str(tmp_path / "plain"), epochs=4), progress=False)
    # Modality 1 again from the round the kill came in (its earlier rounds are in the checkpoint),
    # modality 5 whole: without rates beyond the grid, 4 + (7 + 4) candidate rounds.
    per_round = {k: advances_per_round(plain.lr_search[k]) for k in (1, 5)}
    killed_in = next(r for r in range(len(per_round[1])) if sum(per_round[1][:r + 1]) >= 7 + 2)
    assert resumed_calls == sum(per_round[1][killed_in:]) + sum(per_round[5])
    for k in (1, 5):
        assert {**resumed.lr_search[k], "seconds": 0} == {**plain.lr_search[k], "seconds": 0}
        np.testing.assert_array_equal(resumed.rsc[k].test_embeddings, plain.rsc[k].test_embeddings)


def advances_per_round(record: dict) -> list[int]:
    """How many candidates the search trained in each round (the grid's and those that joined later)."""
    counts = [0] * len(record["rounds"])
    for c in record["candidates"]:
        for r in range(c["joined"], min(c["joined"] + len(c["scores"]) + c["diverged"], len(counts))):
            counts[r] += 1
    return counts


def test_every_rate_diverging_says_what_to_do(mfeat, auto_config, monkeypatch):
    monkeypatch.setattr(lr_search, "score", lambda *args: float("nan"))
    with pytest.raises(Exception, match="every learning rate of the search .* diverged; give --lr by hand"):
        fit(mfeat, auto_config.replace(epochs=2), progress=False)


@pytest.mark.parametrize("lr, message", [(["auto", "fast"], "neither a number nor 'auto'")])
def test_a_rate_that_is_neither_a_number_nor_auto_is_refused(lr, message, tmp_path):
    run = subprocess.run([sys.executable, "-m", "drcl_fast", "train", "--datasets", "mfeat", "--lr", *lr,
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr


def test_config_rates(mfeat, tiny_config):
    assert tiny_config.replace(lr="auto").learning_rates(3) == ["auto"] * 3
    with pytest.raises(ConfigError, match="positive number, or 'auto'"):
        fit(mfeat, tiny_config.replace(lr=[1e-3, "fast", 1, 1, 1, 1]), progress=False)
    with pytest.raises(ConfigError, match="positive number, or 'auto'"):
        fit(mfeat, tiny_config.replace(lr=[float("inf")] * 6), progress=False)
    with pytest.raises(ConfigError, match="lr_criterion 'map'"):
        fit(mfeat, tiny_config.replace(lr="auto", lr_criterion="map"), progress=False)


@pytest.fixture
def scored_by_rate(monkeypatch):
    """Make the search's criterion a function of the candidate's rate alone: `use(f)` scores rate lr by f(lr)."""
    current = threading.local()
    real = lr_search._advance

    def advance(candidate, *args, **kwargs):
        current.lr = candidate.lr
        return real(candidate, *args, **kwargs)

    def use(f):
        monkeypatch.setattr(lr_search, "_advance", advance)
        monkeypatch.setattr(lr_search, "score", lambda *args: f(current.lr))
    return use


@pytest.fixture
def drcl_log():
    """The records the package logs during the test."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("drcl_fast")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_rates_beyond_the_grid_are_half_decade_steps():
    assert [lr_search.rate_beyond(lr, up=True) for lr in (3e-3, 1e-2, 3e-2)] == [1e-2, 3e-2, 1e-1]
    assert [lr_search.rate_beyond(lr, up=False) for lr in (1e-5, 3e-6, 1e-6)] == [3e-6, 1e-6, 3e-7]


def test_a_leader_at_the_top_extends_the_range_until_it_is_interior(mfeat, auto_config, scored_by_rate, drcl_log):
    scored_by_rate(lambda lr: -abs(math.log10(lr / 3e-2)))   # best at 3e-2, above the grid
    r = fit(mfeat, auto_config.replace(epochs=4, lr=[1e-3, "auto", 1e-3, 1e-3, 1e-3, 1e-3]),
            progress=False).lr_search[1]
    assert r["chosen"] == 3e-2 and not r["at_limit"]
    assert r["extended"] == [3e-2, 1e-1]           # 3e-2 led at the top, so 1e-1 was tried; it lost
    assert [c["lr"] for c in r["candidates"]][-3:] == [1e-2, 3e-2, 1e-1]
    messages = [m.getMessage() for m in drcl_log]
    assert any("range extended above 0.01 to 0.1" in m and m.startswith("fac: lr 0.03") for m in messages)
    assert any("3e-02" in m and "<- chosen" in m and "beyond the grid" in m for m in messages)
    assert not [m for m in drcl_log if m.levelno >= logging.WARNING]


def test_a_winner_at_the_hard_limit_warns_with_what_to_do(mfeat, auto_config, scored_by_rate, drcl_log):
    scored_by_rate(lambda lr: -lr)                 # the smaller, the better: down to the limit
    r = fit(mfeat, auto_config.replace(epochs=4, lr=[1e-3, "auto", 1e-3, 1e-3, 1e-3, 1e-3]),
            progress=False).lr_search[1]
    assert r["chosen"] == lr_search.RANGE_LIMITS[0] and r["at_limit"]
    assert r["extended"] == [3e-6, 1e-6, 3e-7, 1e-7]
    warnings = [m.getMessage() for m in drcl_log if m.levelno == logging.WARNING]
    assert len(warnings) == 1 and "chose 1e-07, the smallest rate it tries" in warnings[0]
    assert "may lie below it" in warnings[0] and "--lr" in warnings[0]


def test_an_extended_search_resumes_to_the_uninterrupted_result(mfeat, auto_config, tmp_path, monkeypatch,
                                                                 scored_by_rate):
    scored_by_rate(lambda lr: -abs(math.log10(lr / 3e-2)))
    cfg = auto_config.replace(checkpoint_every=1, out=str(tmp_path / "killed"), epochs=4,
                              lr=[1e-3, "auto", 1e-3, 1e-3, 1e-3, 1e-3])
    extended, calls, armed = lr_search._advance, [], [True]

    def interrupted(candidate, *args, **kwargs):   # a Ctrl-C in the second (last) round
        calls.append(candidate.lr)
        if armed and len(calls) == 9 + 2:         # seven grid rates and two beyond it, then two of four
            armed.clear()
            raise KeyboardInterrupt
        return extended(candidate, *args, **kwargs)

    monkeypatch.setattr(lr_search, "_advance", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(mfeat, cfg, progress=False)
    assert calls[7:9] == [3e-2, 1e-1]
    calls.clear()
    resumed = fit(mfeat, cfg.replace(resume=True), progress=False)
    assert len(calls) == 4                          # the last round again, from the saved round
    plain = fit(mfeat, cfg.replace(out=str(tmp_path / "plain"), checkpoint_every=0), progress=False)
    assert {**resumed.lr_search[1], "seconds": 0} == {**plain.lr_search[1], "seconds": 0}
    assert resumed.lr_search[1]["extended"] == [3e-2, 1e-1]
    np.testing.assert_array_equal(resumed.rsc[1].test_embeddings, plain.rsc[1].test_embeddings)
