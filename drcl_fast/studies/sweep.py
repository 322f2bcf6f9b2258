"""`drcl-fast sweep`: the paper's sensitivity study over α and β (Fig. 3a-b) and its prior comparison (Fig. 3c).

    drcl-fast sweep --datasets mfeat --alpha 0 0.01 0.1 1 --beta 0 0.01 0.1 1 --out runs/studies
    drcl-fast sweep --datasets mfeat --prior each --out runs/studies

The grid: SPL trains once, in the first grid point's run (the prior depends on
neither α nor β), and every other point trains RSC with the prior that run chose
(`Study.learned_prior`); a point's MAP is bit for bit that of `drcl-fast train`
with its α and β, SPL included. Writes `--out/sweep/`: `sweep.csv`, `sweep.md`
and a heatmap per metric (`map_all.png`, `map_50.png`).

`--prior each`: SPL trains once (its run is RSC with the prior it chose), then RSC
with every other modality's `W_k` and with W0. Writes `--out/priors/`:
`priors.csv`, `priors.md` and `priors.png`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from drcl_fast.config import DRCLConfig
from drcl_fast.data import load_dataset
from drcl_fast.data.container import MultiModalData
from drcl_fast.errors import ConfigError
from drcl_fast.flags import config_from_flags
from drcl_fast.runtime import distributed
from drcl_fast.runtime.runlog import setup_run_logging
from drcl_fast.studies import plots
from drcl_fast.studies.points import (NO_SPL, Point, Study, StudyResult, check_study_flags, check_weights,
                                     point_name)
from drcl_fast.studies.tables import METRICS, markdown_table, metric_columns, metric_values, write_csv, write_text

SWEEP, PRIORS = "sweep", "priors"
ALPHA_AXIS, BETA_AXIS = "α (weight of J_D)", "β (weight of J_MSE)"


def run_sweep(args: argparse.Namespace) -> int:
    """`drcl-fast sweep`: the α × β grid, or with `--prior each` the prior comparison; rank 0 reports.

    Returns:
        0 (the exit status).

    Raises:
        ConfigError: flags that make no study (see `sweep_settings`), or no matplotlib.
        DRCLError: anything `drcl-fast train` would refuse, for any point.
    """
    with distributed.process_group():
        base, alphas, betas = sweep_settings(args)
        each = args.prior == "each"
        setup_run_logging(Path(base.out) / (PRIORS if each else SWEEP), base.datasets, base.quiet,
                          distributed.rank())
        plots.require_matplotlib()
        data = load_dataset(base.datasets, base.data_root, base.data_path, path_option="--data_path FILE")
        result = compare_priors(base, data) if each else sweep_grid(base, data, alphas, betas)
        if distributed.is_main() and not base.quiet:
            print(result.summary)
            print("written: " + ", ".join(map(str, result.files)))
    return 0


def sweep_settings(args: argparse.Namespace) -> tuple[DRCLConfig, list[float], list[float]]:
    """The train configuration every point starts from, and the grid's α and β values.

    Returns:
        (base configuration, alphas, betas); with `--prior each`, one α and one β.

    Raises:
        ConfigError: no grid; --prior each with several values or with --wselect False;
            --view_id or --running_time.
    """
    each = args.prior == "each"
    if each and args.wselect is False:
        raise ConfigError("--prior each compares the priors SPL learns on each modality, and --wselect False "
                          "reads one from a file instead; drop --wselect")
    if each and (len(args.alpha or ()) > 1 or len(args.beta or ()) > 1):
        raise ConfigError("--prior each compares the priors at one alpha and one beta; give at most one value "
                          "of each, or sweep the grid without --prior each")
    if not each and args.alpha is None and args.beta is None:
        raise ConfigError("drcl-fast sweep needs a grid: --alpha A [A ...] and/or --beta B [B ...] (e.g. "
                          "--alpha 0 0.01 0.1 1 --beta 0 0.01 0.1 1), or --prior each to compare the priors")
    alphas, betas = args.alpha, args.beta
    # The base run takes train's single α and β (with --prior each, the one given); points set theirs.
    single = dict(vars(args), alpha=alphas[0] if each and alphas else None,
                  beta=betas[0] if each and betas else None, prior="spl" if each else args.prior)
    base = config_from_flags(argparse.Namespace(**single))
    check_study_flags(base, "sweep")
    if each:
        return base, [base.alpha], [base.beta]
    return base, alphas or [base.alpha], betas or [base.beta]


def grid_files(folder: Path) -> list[Path]:
    return [folder / "sweep.csv", folder / "sweep.md", *(folder / f"{key}.png" for key in METRICS)]


def grid_point(alpha: float, beta: float) -> Point:
    return Point(point_name(alpha=alpha, beta=beta), {"alpha": alpha, "beta": beta}, {"alpha": alpha, "beta": beta})


def sweep_grid(base: DRCLConfig, data: MultiModalData, alphas: list[float], betas: list[float]) -> StudyResult:
    """Train every (α, β) point and write the grid's CSV, markdown and heatmaps under `base.out/sweep/`.

    With `base.prior == "spl"` SPL trains once, in the first point's run; the others reuse its prior.

    Args:
        base: the train run every point is (α and β aside).
        data: the dataset.
        alphas, betas: the grid (rows and columns), each value once.

    Returns:
        The records of every point, and (on rank 0) the files written and their markdown.

    Raises:
        ConfigError: a value of the grid is negative, not finite, or given twice.
        DRCLError: as `Study.run`, or as `fit` for any point.
    """
    alphas, betas = check_weights("--alpha", alphas), check_weights("--beta", betas)
    study = Study(SWEEP, base, data, len(alphas) * len(betas), grid_files(Path(base.out) / SWEEP))
    points = [grid_point(a, b) for a in alphas for b in betas]
    if study.base.prior == "spl":
        first = points[0]

        def reusing(_: dict[str, dict]) -> list[Point]:
            prior = study.learned_prior(first.name)
            return [Point(p.name, {**p.changes, **prior}, p.labels) for p in points[1:]]

        records = study.run([lambda _: [first], reusing])
    else:
        records = study.run([lambda _: points])
    if not distributed.is_main():
        return StudyResult(records, [], "")
    return write_grid(study, alphas, betas, records)


def write_grid(study: Study, alphas: list[float], betas: list[float], records: dict[str, dict]) -> StudyResult:
    """The grid's `sweep.csv` (a row per point), `sweep.md` and one heatmap per metric."""
    rows = [records[grid_point(a, b).name] for a in alphas for b in betas]
    files = grid_files(study.folder)
    write_csv(files[0], ["alpha", "beta", *metric_columns(rows[0])],
              [[r["labels"]["alpha"], r["labels"]["beta"], *metric_values(r)] for r in rows])
    directions = len(rows[0]["metrics"]["map_all"]["directions"])
    blocks = []
    for n, (key, title) in enumerate(METRICS.items()):
        grid = np.array([r["metrics"][key]["mean"] for r in rows]).reshape(len(alphas), len(betas))
        heading = f"{study.data.name}: {title}, mean over the {directions} directions"
        table = markdown_table(["α \\ β", *(f"{b:g}" for b in betas)],
                               [[f"{a:g}", *(f"{v:.5f}" for v in line)] for a, line in zip(alphas, grid)])
        blocks.append(f"### {heading}\n\n{table}")
        plots.heatmap(files[2 + n], grid, alphas, betas, row_label=ALPHA_AXIS, column_label=BETA_AXIS,
                      title=heading, value_label=title)
    summary = "\n\n".join(blocks)
    write_text(files[1], summary)
    return StudyResult(records, files, summary)


def prior_files(folder: Path) -> list[Path]:
    return [folder / "priors.csv", folder / "priors.md", folder / "priors.png"]


def compare_priors(base: DRCLConfig, data: MultiModalData) -> StudyResult:
    """RSC with the prior SPL learned on each modality and with W0; table and bar chart in `base.out/priors/`.

    SPL trains once, in a run that is RSC with the prior SPL chose; the other K - 1 modalities'
    `W_k` and W0 then have a run each: K + 1 rows.

    Args:
        base: the train run every point is (its prior aside).
        data: the dataset.

    Returns:
        The records of every point, and (on rank 0) the files written and their markdown.

    Raises:
        DRCLError: as `Study.run`, or as `fit` for any point.
    """
    study = Study(PRIORS, base, data, data.num_modalities + 1, prior_files(Path(base.out) / PRIORS))
    spl = Point("prior=spl", {"prior": "spl"}, {"prior": "spl"})
    w0 = Point("prior=w0", {"prior": "w0", **NO_SPL}, {"prior": "W0"})

    def learned(records: dict[str, dict]) -> list[Point]:
        choice = records[spl.name]["spl_choice"]
        return [Point(_learned_name(m), study.learned_prior(spl.name, k), {"prior": m})
                for k, m in enumerate(data.modalities) if k != choice]

    records = study.run([lambda _: [spl, w0], learned])
    if not distributed.is_main():
        return StudyResult(records, [], "")
    choice = records[spl.name]["spl_choice"]
    rows = [(m, k == choice, records[spl.name] if k == choice else records[_learned_name(m)])
            for k, m in enumerate(data.modalities)] + [("W0", False, records[w0.name])]
    files = prior_files(study.folder)
    write_csv(files[0], ["prior", "spl_choice", *metric_columns(rows[0][2])],
              [[name, chosen, *metric_values(r)] for name, chosen, r in rows])
    at = f"α = {study.base.alpha:g}, β = {study.base.beta:g}"
    names = [f"W_{k} learned on {name}" + (" (SPL's choice)" if chosen else "")
             for k, (name, chosen, _) in enumerate(rows[:-1])] + ["W0 (random orthogonal: without SPL)"]
    table = markdown_table(["prior", *METRICS.values()],
                           [[label, *(f"{r['metrics'][key]['mean']:.5f}" for key in METRICS)]
                            for label, (_, _, r) in zip(names, rows)])
    summary = f"### {data.name}: RSC with each prior ({at})\n\n{table}"
    write_text(files[1], summary)
    plots.bars(files[2], [name + ("\n(SPL's choice)" if chosen else "") for name, chosen, _ in rows],
               {title: [r["metrics"][key]["mean"] for _, _, r in rows] for key, title in METRICS.items()},
               title=f"{data.name}: RSC with each modality's W_k and with W0 ({at})",
               group_label="prior: W_k learned by SPL on that modality, or W0", value_label="MAP")
    return StudyResult(records, files, summary)


def _learned_name(modality: str) -> str:
    return point_name(prior="learned", on=modality)
