"""The model folder a run writes: `--out/model/`, its encoders, prior and preprocessing.

A `--view_id` run trains one modality; its model joins the one an earlier run of the same settings
and data wrote there (the released flow trains the views one run at a time into one folder).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import MultiModalData
from drcl_fast.errors import ModelError
from drcl_fast.retrieval.report import metrics_dict
from drcl_fast.serving.model_folder import MANIFEST, WEIGHTS, ModalityEntry, TrainedModel, load_model, model_of_run
from drcl_fast.training.checkpoint import fingerprint

if TYPE_CHECKING:   # the trainer imports this module: its result type only for the annotations
    from drcl_fast.training.trainer import FitResult

log = logging.getLogger("drcl_fast")


def model_path(out: str | Path) -> Path:
    return Path(out) / "model"


def run_identity(cfg: DRCLConfig, data: MultiModalData) -> str:
    """A digest of the run's settings and data, whichever modality a --view_id run trains and wherever its
    prior comes from (the released flow learns it in the first view's run, reads it in the others'): the prior
    itself is compared when the model is written."""
    identity = fingerprint(cfg.replace(view_id=-1, prior="spl"), data)
    return hashlib.sha256(repr(sorted(identity.items())).encode()).hexdigest()


def planned_model_files(cfg: DRCLConfig, data: MultiModalData, views: list[int]) -> list[Path]:
    """The model files this run would replace: none where it only adds modalities to its own run's model."""
    folder = model_path(cfg.out)
    files = [folder / MANIFEST, folder / WEIGHTS]
    earlier = _earlier_model(folder, run_identity(cfg, data)) if cfg.view_id >= 0 else None
    if earlier is not None and not set(views) & set(earlier.encoders):
        return []
    return files


def _earlier_model(folder: Path, identity: str) -> TrainedModel | None:
    """The model an earlier run with these settings and data wrote to `folder`, if it is there and whole."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        earlier = load_model(folder)
    except ModelError as error:
        log.warning("the model in %s cannot be read (%s): this run replaces it", folder, error)
        return None
    return earlier if earlier.run_identity == identity else None


def save_run_model(cfg: DRCLConfig, data: MultiModalData, result: "FitResult",
                   rates: dict[int, float]) -> TrainedModel:
    """Write the run's model to `--out/model/` (joining an earlier --view_id run's) and return it.

    `rates`: the learning rate each trained modality ran at (searched ones included).
    """
    entries = {k: ModalityEntry(k, data.modalities[k], data.input_dims()[k], rsc.best_epoch,
                                float(rsc.best_val_loss), float(rates[k])) for k, rsc in result.rsc.items()}
    identity = run_identity(cfg, data)
    model = model_of_run(
        data.name, data.modalities, {k: rsc.encoder_state for k, rsc in result.rsc.items()}, entries,
        result.prior, data.preprocessing,
        classes=None if data.classes is None else [int(c) for c in data.classes], class_names=data.class_names,
        multilabel=data.multilabel, config=_json_config(cfg), metrics=metrics_dict(result.metrics),
        prior_source=result.prior_source, run_identity=identity)
    folder = model_path(cfg.out)
    earlier = _earlier_model(folder, identity) if cfg.view_id >= 0 else None
    if earlier is not None and not torch.equal(earlier.prior, model.prior):
        log.warning("the model in %s holds modalities %s trained with another prior, whose embeddings share no "
                    "space with this run's: this run's model replaces it", folder, earlier.trained)
        earlier = None
    if earlier is not None:
        for k in set(earlier.encoders) - set(model.encoders):
            model.encoders[k], model.entries[k] = earlier.encoders[k], earlier.entries[k]
            if k in earlier.preprocessing:
                model.preprocessing[k] = earlier.preprocessing[k]
        if not model.metrics:
            model.metrics = earlier.metrics
    model.save(folder)
    return model


# How a run was invoked, not what it trained: left out, so that the same run writes the same model anywhere.
NOT_IN_MODEL = ("out", "quiet", "overwrite", "resume", "checkpoint_every")


def _json_config(cfg: DRCLConfig) -> dict:
    """The run's settings as JSON values (a --lr list may hold "auto")."""
    import json
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_MODEL}
    return json.loads(json.dumps(settings, default=str))
