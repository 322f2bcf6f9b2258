"""`drcl-fast ablate`: the paper's ablations, DRCL against itself without SPL, without MRR, without FA.

    drcl-fast ablate --datasets mfeat --seeds 1 2 3 --out runs/studies

Per seed: the full run (the train run the flags give, SPL learning the prior), without
SPL (prior W0), without MRR (α = β = 0) and without FA (γ = 1). The last two reuse the
prior the full run of their seed learned (SPL depends on neither α, β nor γ), so SPL
trains once per seed. Writes `--out/ablate/ablate.md` (mean ± sample standard
deviation over the seeds; with one seed, the value) and `ablate.json`.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Sequence

from drcl_fast.config import DRCLConfig
from drcl_fast.data import load_dataset
from drcl_fast.data.container import MultiModalData
from drcl_fast.errors import ConfigError
from drcl_fast.flags import config_from_flags
from drcl_fast.outputs import save_json
from drcl_fast.runtime import distributed
from drcl_fast.runtime.runlog import setup_run_logging
from drcl_fast.studies.points import NO_SPL, Point, Study, StudyResult, check_study_flags, point_name
from drcl_fast.studies.tables import METRICS, markdown_table, write_text

ABLATE = "ablate"
# variant: (its name in the table, what it changes)
VARIANTS = {"full": ("DRCL (full)", "nothing"),
            "no_spl": ("without SPL", "prior W0"),
            "no_mrr": ("without MRR", "α = β = 0"),
            "no_fa": ("without FA", "γ = 1")}
SPREAD = "sample standard deviation (n - 1 in the denominator) over the seeds"


def run_ablate(args: argparse.Namespace) -> int:
    """`drcl-fast ablate`: the four variants for every seed; rank 0 prints and writes the table.

    Returns:
        0 (the exit status).

    Raises:
        ConfigError: flags that make no ablation (see `ablate_settings`).
        DRCLError: anything `drcl-fast train` would refuse, for any point.
    """
    with distributed.process_group():
        base, seeds = ablate_settings(args)
        setup_run_logging(Path(base.out) / ABLATE, base.datasets, base.quiet, distributed.rank())
        data = load_dataset(base.datasets, base.data_root, base.data_path, path_option="--data_path FILE")
        result = ablate(base, data, seeds)
        if distributed.is_main() and not base.quiet:
            print(result.summary)
            print("written: " + ", ".join(map(str, result.files)))
    return 0


def ablate_settings(args: argparse.Namespace) -> tuple[DRCLConfig, list[int]]:
    """The full variant's train configuration and the seeds.

    Raises:
        ConfigError: --seeds with --seed, a prior other than SPL's, --view_id or --running_time.
    """
    if args.seeds is not None and args.seed is not None:
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))} and --seed {args.seed}: give the seeds "
                          f"with --seeds alone")
    base = config_from_flags(args)
    check_study_flags(base, "ablate")
    if base.prior != "spl":
        raise ConfigError(f"--prior {base.prior}: drcl-fast ablate compares DRCL, whose prior SPL learns, with "
                          f"its variants (without SPL uses W0); drop --prior and --wselect")
    return base, list(args.seeds) if args.seeds is not None else [base.seed]


def variant_point(variant: str, seed: int, prior: dict | None = None) -> Point:
    """The point of `variant` at `seed`; `prior`: the changes that reuse the full run's prior."""
    changes = {"full": {"prior": "spl"}, "no_spl": {"prior": "w0", **NO_SPL},
               "no_mrr": {"alpha": 0.0, "beta": 0.0}, "no_fa": {"gamma": 1.0}}[variant]
    return Point(point_name(variant=variant, seed=seed), {"seed": seed, **changes, **(prior or {})},
                 {"variant": variant, "seed": seed})


def ablate(base: DRCLConfig, data: MultiModalData, seeds: Sequence[int]) -> StudyResult:
    """Train the four variants for every seed; write `ablate.md` and `ablate.json` under `base.out/ablate/`.

    Args:
        base: the full variant's train run (its seed aside).
        data: the dataset.
        seeds: the seeds, each once.

    Returns:
        The records of every point, and (on rank 0) the files written and the markdown table.

    Raises:
        ConfigError: a seed is given twice.
        DRCLError: as `Study.run`, or as `fit` for any point.
    """
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise ConfigError(f"--seeds lists {', '.join(map(str, twice))} more than once; give each seed once")
    folder = Path(base.out) / ABLATE
    study = Study(ABLATE, base, data, len(VARIANTS) * len(seeds), [folder / "ablate.md", folder / "ablate.json"])

    def reusing(_: dict[str, dict]) -> list[Point]:
        priors = {s: study.learned_prior(variant_point("full", s).name) for s in seeds}
        return [variant_point(variant, s, priors[s]) for s in seeds for variant in ("no_mrr", "no_fa")]

    records = study.run([lambda _: [variant_point(v, s) for s in seeds for v in ("full", "no_spl")], reusing])
    if not distributed.is_main():
        return StudyResult(records, [], "")
    return write_ablation(study, list(seeds), records)


def mean_spread(values: Sequence[float]) -> str:
    """`mean ± sample standard deviation`, 5 decimals; one value alone as itself."""
    if len(values) == 1:
        return f"{values[0]:.5f}"
    return f"{statistics.fmean(values):.5f} ± {statistics.stdev(values):.5f}"


def write_ablation(study: Study, seeds: list[int], records: dict[str, dict]) -> StudyResult:
    """`ablate.md` (a row per variant) and `ablate.json` (every seed's value, mean and spread)."""
    rows, variants = [], []
    for variant, (title, change) in VARIANTS.items():
        points = [variant_point(variant, s).name for s in seeds]
        per_metric = {key: [records[p]["metrics"][key]["mean"] for p in points] for key in METRICS}
        rows.append([title, change, *(mean_spread(per_metric[key]) for key in METRICS)])
        variants.append({"variant": variant, "title": title, "changes": change, "points": points,
                         **{key: {"per_seed": dict(zip(map(str, seeds), values)),
                                  "mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else None}
                            for key, values in per_metric.items()}})
    over = (f"mean ± {SPREAD} {', '.join(map(str, seeds))}" if len(seeds) > 1
            else f"one run per variant, seed {seeds[0]}")
    directions = len(next(iter(records.values()))["metrics"]["map_all"]["directions"])
    summary = (f"### {study.data.name}: ablations (MAP, mean over the {directions} directions; {over})\n\n"
               + markdown_table(["variant", "changes", *METRICS.values()], rows))
    folder = study.folder
    write_text(folder / "ablate.md", summary)
    save_json(folder / "ablate.json", {"dataset": study.data.name, "seeds": seeds,
                                       "spread": SPREAD if len(seeds) > 1 else None, "variants": variants})
    return StudyResult(records, [folder / "ablate.md", folder / "ablate.json"], summary)
