"""`drcl-fast sweep` and `drcl-fast ablate`: the grid, SPL once, resume, the prior comparison, the ablations.

Every point is a real (tiny) train run on the bundled mfeat data, so each study's numbers are
checked against a plain `drcl-fast train` with the same settings, to the last bit.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from drcl_fast.cli import main
from drcl_fast.studies import points
from drcl_fast.studies.ablate import mean_spread
from drcl_fast.training import trainer
from tests.support import fails_with, run_torchrun

TINY = ["--datasets", "mfeat", "--epochs", "2", "--hidden_shape", "32", "--output_shape", "16",
        "--batch_size", "200", "--device", "cpu", "--quiet"]
GRID = ["--alpha", "0", "0.1", "--beta", "0", "1"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as torchrun's ranks run: CPU products round by thread count, and every
    comparison here is exact. (It is also the fastest on a busy 2-core machine.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Counting:
    """Counts the calls of a function it wraps; with `fail_after`, raises on the call after that many."""

    def __init__(self, function, fail_after: int | None = None) -> None:
        self.function, self.fail_after, self.calls = function, fail_after, 0

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt("interrupted by the test")
        self.calls += 1
        return self.function(*args, **kwargs)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def record(study: Path, point: str) -> dict:
    return json.loads((study / "points" / f"{point}.json").read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 sweep, uninterrupted, counting its fits and SPL's per-modality trainings."""
    out = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as patch:
        fits, spl = Counting(points.fit), Counting(trainer.learn_prior)
        patch.setattr(points, "fit", fits)
        patch.setattr(trainer, "learn_prior", spl)
        assert main(["sweep", *TINY, *GRID, "--out", str(out)]) == 0
    return out / "sweep", fits.calls, spl.calls


def test_sweep_writes_the_grid_csv_markdown_and_a_heatmap_per_metric(grid):
    study, _, _ = grid
    rows = read_csv(study / "sweep.csv")
    assert [(r["alpha"], r["beta"]) for r in rows] == [("0.0", "0.0"), ("0.0", "1.0"), ("0.1", "0.0"), ("0.1", "1.0")]
    directions = list(record(study, "alpha=0.0_beta=0.0")["metrics"]["map_all"]["directions"])
    assert len(directions) == 30
    assert list(rows[0]) == ["alpha", "beta", "map_all", "map_50", *(f"{key}:{d}" for key in ("map_all", "map_50")
                                                                    for d in directions)]
    for row in rows:
        saved = record(study, f"alpha={row['alpha']}_beta={row['beta']}")["metrics"]
        assert float(row["map_all"]) == saved["map_all"]["mean"] and float(row["map_50"]) == saved["map_50"]["mean"]
        assert float(row["map_50:fac->pix"]) == saved["map_50"]["directions"]["fac->pix"]
    markdown = (study / "sweep.md").read_text()
    assert "MAP@all, mean over the 30 directions" in markdown and "| α \\ β | 0 | 1 |" in markdown
    assert f"| 0.1 | {float(rows[2]['map_all']):.5f} | {float(rows[3]['map_all']):.5f} |" in markdown
    for picture in ("map_all.png", "map_50.png"):
        assert (study / picture).read_bytes()[:8] == PNG and (study / picture).stat().st_size > 10_000


def test_spl_trains_once_and_every_point_keeps_its_own_outputs(grid):
    study, fits, spl = grid
    assert fits == 4 and spl == 6   # one SPL run: one W_k per modality, for the whole grid
    first = record(study, "alpha=0.0_beta=0.0")
    assert first["settings"]["prior"] == "spl" and first["prior_source"].startswith("spl:")
    prior = study / "runs" / "alpha=0.0_beta=0.0" / "PriorW" / "W_16X10mfeat.mat"
    for name in ("alpha=0.0_beta=1.0", "alpha=0.1_beta=0.0", "alpha=0.1_beta=1.0"):
        other = record(study, name)
        assert other["prior_file"] == str(prior) and other["settings"]["prior"].startswith("sha256:")
        assert not (study / "runs" / name / "PriorW").exists()
    for name in [p.stem for p in (study / "points").glob("*.json")]:
        run = study / "runs" / name
        assert json.loads((run / "metrics.json").read_text()) == record(study, name)["metrics"]
        assert all((run / "features" / f"mfeat_{k}.mat").is_file() for k in range(6))
        assert "arguments:" in (run / "logging" / "mfeat.log").read_text()


def test_a_grid_point_is_the_train_run_with_its_alpha_beta_and_the_sweeps_prior(grid, tmp_path):
    study, _, _ = grid
    prior = study / "runs" / "alpha=0.0_beta=0.0" / "PriorW" / "W_16X10mfeat.mat"
    point = record(study, "alpha=0.1_beta=1.0")["metrics"]
    # The sweep's prior, read from its file, and SPL learned afresh: SPL once changes nothing.
    for name, prior_flag in (("file", str(prior)), ("spl", "spl")):
        assert main(["train", *TINY, "--alpha", "0.1", "--beta", "1", "--prior", prior_flag,
                     "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "metrics.json").read_text()) == point
        # The point's model folder holds the train run's weights, to the byte.
        weights = "model/weights.safetensors"
        assert (tmp_path / name / weights).read_bytes() == (study / "runs" / "alpha=0.1_beta=1.0" / weights).read_bytes()


def test_an_interrupted_sweep_resumes_without_redoing_points_to_the_same_csv(grid, tmp_path, monkeypatch, capsys):
    study, _, _ = grid
    argv = ["sweep", *TINY, *GRID, "--out", str(tmp_path)]
    monkeypatch.setattr(points, "fit", Counting(points.fit, fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert len(list((tmp_path / "sweep" / "points").glob("*.json"))) == 2   # each saved as it finished
    assert "pass --resume to continue it" in fails_with(argv, capsys)
    assert "other settings (seed 1 there, 2 now)" in fails_with([*argv, "--seed", "2", "--resume"], capsys)
    resumed = Counting(points.fit.function)
    monkeypatch.setattr(points, "fit", resumed)
    assert main([*argv, "--resume"]) == 0
    assert resumed.calls == 2
    assert (tmp_path / "sweep" / "sweep.csv").read_bytes() == (study / "sweep.csv").read_bytes()


def test_prior_each_compares_every_modalitys_prior_and_w0(tmp_path, monkeypatch):
    fits = Counting(points.fit)
    monkeypatch.setattr(points, "fit", fits)
    assert main(["sweep", *TINY, "--prior", "each", "--alpha", "0.1", "--out", str(tmp_path)]) == 0
    study = tmp_path / "priors"
    rows = read_csv(study / "priors.csv")
    assert [r["prior"] for r in rows] == ["fou", "fac", "kar", "pix", "zer", "mor", "W0"]   # K + 1
    assert fits.calls == 7 and [r["spl_choice"] for r in rows].count("True") == 1
    chosen = next(r for r in rows if r["spl_choice"] == "True")
    assert float(chosen["map_all"]) == record(study, "prior=spl")["metrics"]["map_all"]["mean"]
    assert record(study, "prior=w0")["settings"]["prior"] == "w0"
    markdown = (study / "priors.md").read_text()
    assert markdown.count("\n| W") == 7 and "(SPL's choice)" in markdown and "α = 0.1, β = 0.1" in markdown
    assert (study / "priors.png").read_bytes()[:8] == PNG


def test_ablate_trains_the_four_variants_per_seed_and_tabulates_mean_and_spread(tmp_path):
    assert main(["ablate", *TINY, "--seeds", "1", "2", "--out", str(tmp_path)]) == 0
    study = tmp_path / "ablate"
    for seed in (1, 2):
        full, no_spl, no_mrr, no_fa = (record(study, f"variant={v}_seed={seed}")["settings"]
                                       for v in ("full", "no_spl", "no_mrr", "no_fa"))
        assert full["prior"] == "spl" and (full["alpha"], full["beta"], full["gamma"]) == (0.1, 0.1, 0.9)
        assert no_spl["prior"] == "w0" and no_spl["gamma"] == 0.9
        assert (no_mrr["alpha"], no_mrr["beta"], no_mrr["gamma"]) == (0.0, 0.0, 0.9)
        assert (no_fa["alpha"], no_fa["beta"], no_fa["gamma"]) == (0.1, 0.1, 1.0)
        assert no_mrr["prior"] == no_fa["prior"] and no_mrr["prior"].startswith("sha256:")   # the full run's prior
        assert {full["seed"], no_spl["seed"], no_mrr["seed"], no_fa["seed"]} == {seed}
    lines = (study / "ablate.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and "MAP@all" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| DRCL (full)", "| without SPL", "| without MRR",
                                                        "| without FA"]
    assert all(line.count(" ± ") == 2 for line in table) and "sample standard deviation" in lines[0]
    summary = json.loads((study / "ablate.json").read_text())
    full = summary["variants"][0]
    values = [record(study, f"variant=full_seed={s}")["metrics"]["map_all"]["mean"] for s in (1, 2)]
    assert full["map_all"]["per_seed"] == {"1": values[0], "2": values[1]}
    assert full["map_all"]["mean"] == pytest.approx(sum(values) / 2)
    assert f"| DRCL (full) | nothing | {mean_spread(values)} |" in table[0]


def test_the_spread_is_the_sample_standard_deviation_and_one_seed_shows_its_value():
    assert mean_spread([0.5]) == "0.50000"
    assert mean_spread([0.5, 0.7]) == "0.60000 ± 0.14142"   # sqrt(0.02): n - 1 in the denominator


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--alpha"], "argument --alpha: expected at least one argument"),
    (["sweep", "--alpha", "-1", "0.1"], "--alpha -1.0: a loss weight must be a finite number >= 0"),
    (["sweep", "--beta", "0.1", "nan"], "--beta nan: a loss weight must be a finite number >= 0"),
    (["sweep", "--alpha", "0.1", "0.1"], "--alpha lists 0.1 more than once"),
    (["sweep"], "needs a grid: --alpha A [A ...] and/or --beta B [B ...]"),
    (["sweep", "--prior", "each", "--alpha", "0", "1"], "--prior each compares the priors at one alpha and one beta"),
    (["sweep", "--prior", "each", "--wselect", "False"], "--wselect False reads one from a file"),
    (["sweep", "--alpha", "0", "--view_id", "1"], "--view_id 1: drcl-fast sweep scores every direction"),
    (["sweep", "--alpha", "0", "--running_time"], "--running_time skips the evaluation"),
    (["ablate", "--seeds", "1", "1"], "--seeds lists 1 more than once"),
    (["ablate", "--seeds", "1", "2", "--seed", "3"], "give the seeds with --seeds alone"),
    (["ablate", "--prior", "w0"], "--prior w0: drcl-fast ablate compares DRCL, whose prior SPL learns"),
])
def test_bad_study_flags_stop_before_training_with_a_clear_message(argv, message, tmp_path, capsys):
    assert message in fails_with([*argv, *TINY, "--out", str(tmp_path)], capsys)
    assert not list(tmp_path.glob("*/points"))


def test_two_ranks_write_the_csv_of_one_process(grid, tmp_path):
    """Points spread over 2 torchrun ranks, each trained alone in its rank: the same CSV, byte for byte,
    as this process's (one intra-op thread, as the ranks)."""
    run = run_torchrun(["-m", "drcl_fast", "sweep", *TINY, *GRID, "--out", str(tmp_path)], nproc=2)
    assert run.returncode == 0, run.stderr
    one, two = grid[0], tmp_path / "sweep"
    assert (two / "sweep.csv").read_bytes() == (one / "sweep.csv").read_bytes()
    log = (two / "logging" / "mfeat.log").read_text()
    assert "sweep plan: rank 1: alpha=0.1_beta=0.0" in log   # the second stage's points over both ranks
    assert "sweep alpha=0.1_beta=0.0" in (two / "logging" / "mfeat.rank1.log").read_text()
