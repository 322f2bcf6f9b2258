"""Everything checked before a run trains: arguments against each other, the data and the machine."""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

from drcl_fast.config import AUTO, CRITERIA, DRCLConfig
from drcl_fast.data.container import SPLITS, MultiModalData
from drcl_fast.errors import ConfigError, DataError, DataWarning, OutputError


def check_run(cfg: DRCLConfig, data: MultiModalData) -> list[int]:
    """Raise ConfigError/OutputError for anything that would fail later; return the views to train."""
    _check_numbers(cfg, data)
    k = data.num_modalities
    if k < 2:
        raise ConfigError(f"dataset {data.name!r} has one modality ({data.modalities[0]}); cross-modal "
                          f"retrieval needs at least two")
    if not -1 <= cfg.view_id < k:
        raise ConfigError(f"--view_id {cfg.view_id} is out of range: {data.name!r} has modalities "
                          f"0..{k - 1} ({', '.join(data.modalities)}), or -1 for all")
    if isinstance(cfg.lr, (list, tuple)) and len(cfg.lr) != k:
        raise ConfigError(f"--lr gives {len(cfg.lr)} learning rate(s) for the {k} modalities of {data.name!r} "
                          f"({', '.join(data.modalities)}); pass one for every modality, or exactly one per "
                          f"modality")
    cfg.learning_rates(k)   # a released name with more modalities than the released list: said before training
    views = [cfg.view_id] if cfg.view_id >= 0 else list(range(k))
    unlabelled = unlabelled_counts(data)
    # SPL learns on every modality, whichever views RSC trains.
    for v in range(k) if cfg.prior == "spl" else views:
        _check_training_rows(cfg, data, v, unlabelled[v]["train"])
    for v in views:
        _check_validation_rows(data, v, unlabelled[v]["valid"])
    _check_prior(cfg)
    check_writable(cfg.out)
    _warn_unlabelled(data, unlabelled)
    return views


def unlabelled_counts(data: MultiModalData) -> list[dict[str, int]]:
    """Per modality, the number of rows with no label in each split (all 0 for single-label data)."""
    return [{s: int(data.unlabelled_rows(s, v).sum()) for s in SPLITS} for v in range(data.num_modalities)]


def _check_training_rows(cfg: DRCLConfig, data: MultiModalData, v: int, unlabelled: int) -> None:
    """At least one full batch of labelled training rows: rows with no label are left out of training."""
    n = data.train.features[v].shape[0]
    name = f"modality {v} ({data.modalities[v]})"
    if unlabelled == n:
        raise DataError(f"dataset {data.name!r}, {name}: all {n} training rows have no label (all-zero rows "
                        f"of the label matrix), so there is nothing to train on; give them their classes")
    labelled = n - unlabelled
    if labelled < cfg.batch_size:
        rows = f"{labelled} training rows with a label ({unlabelled} of {n} have none)" if unlabelled \
            else f"{n} training rows"
        raise ConfigError(f"{name} has {rows}, fewer than one batch of --batch_size {cfg.batch_size}: no full "
                          f"batch to train on; lower it")


def _check_validation_rows(data: MultiModalData, v: int, unlabelled: int) -> None:
    n = data.valid.features[v].shape[0]
    if unlabelled == n:
        raise DataError(f"dataset {data.name!r}, modality {v} ({data.modalities[v]}): all {n} validation rows "
                        f"have no label (all-zero rows of the label matrix), so no model can be selected; "
                        f"give them their classes, or move labelled items into the valid split")


def _warn_unlabelled(data: MultiModalData, unlabelled: list[dict[str, int]]) -> None:
    """One warning per run for the rows with no label, so that a user sees it once."""
    listed = "; ".join(f"{m}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
                       for m, counts in zip(data.modalities, unlabelled) if any(counts.values()))
    if listed:
        warnings.warn(f"dataset {data.name!r}: some rows have no label (all-zero rows of the label matrix) — "
                      f"{listed}. Their train and valid rows are left out of training, SPL scoring and model "
                      f"selection; test rows are kept (as gallery items they are never relevant, and MAP skips "
                      f"them as queries)", DataWarning, stacklevel=4)


def _check_numbers(cfg: DRCLConfig, data: MultiModalData) -> None:
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "hidden_shape": cfg.hidden_shape,
                "sample_interval": cfg.sample_interval, "lr_SPL": cfg.lr_SPL}
    if cfg.concurrent_units != AUTO:
        if not isinstance(cfg.concurrent_units, int) or isinstance(cfg.concurrent_units, bool):
            raise ConfigError(f"--concurrent_units {cfg.concurrent_units!r}: give a whole number of units, or 'auto'")
        positive["concurrent_units"] = cfg.concurrent_units
    if cfg.spl_epochs is not None:
        positive["spl_epochs"] = cfg.spl_epochs
    for name, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--{name} {value}: must be positive")
    rates = [cfg.lr] if isinstance(cfg.lr, (str, int, float)) else cfg.lr or []   # one value: every modality
    if not all(lr == AUTO if isinstance(lr, str) else math.isfinite(lr) and lr > 0 for lr in rates):
        raise ConfigError(f"--lr {cfg.lr}: every learning rate must be a positive number, or 'auto' to search it")
    if cfg.lr_criterion not in CRITERIA:
        raise ConfigError(f"lr_criterion {cfg.lr_criterion!r}: use one of {', '.join(CRITERIA)}")
    for name in ("alpha", "beta", "eta"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"--{name} {getattr(cfg, name)}: a loss weight must be >= 0")
    if not 0.0 <= cfg.gamma <= 1.0:
        raise ConfigError(f"--gamma {cfg.gamma}: the Mixup coefficient must lie in [0, 1] (1 disables FA)")
    if cfg.output_shape != -1 and cfg.output_shape < data.num_classes:
        raise ConfigError(f"--output_shape {cfg.output_shape} is smaller than the {data.num_classes} classes "
                          f"of {data.name!r}: the prior W (D x C) needs D >= C; use -1 for D = C")
    if cfg.checkpoint_every is not None and cfg.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint_every {cfg.checkpoint_every}: must be >= 0 (0 disables checkpoints)")


def _check_prior(cfg: DRCLConfig) -> None:
    if cfg.prior not in ("spl", "file", "w0") and not Path(cfg.prior).is_file():
        raise ConfigError(f"--prior {cfg.prior!r}: not 'spl', 'file', 'w0' or an existing file")
    if cfg.prior != "spl":
        given = [flag for flag, on in (("--released_prior_slip", cfg.released_prior_slip),
                                       ("--spl_epochs", cfg.spl_epochs is not None)) if on]
        if given:
            raise ConfigError(f"{' and '.join(given)} only apply when SPL learns the prior, but the prior "
                              f"comes from {cfg.prior!r}; drop them or use --wselect True")


def check_writable(out: str | Path) -> None:
    """Fail now, not after hours of training, if results cannot be written under `out`."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OutputError(f"output directory {path} is not writable ({err.strerror or err}); "
                          f"choose another with --out") from None
