"""A whole DRCL run: prior (SPL once), RSC per modality, evaluation, output files."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drcl_fast import ops, outputs
from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import MultiModalData
from drcl_fast.modality import ModalityData
from drcl_fast.retrieval import evaluate_directions
from drcl_fast.retrieval.report import DirectionResult, metrics_dict
from drcl_fast.rsc import RSCResult, RSCSettings, train_rsc
from drcl_fast.spl import SPLResult, initial_prior, learn_prior, select_prior

log = logging.getLogger("drcl_fast")

RETRIEVAL_KS = (None, 50)  # MAP@all and MAP@50, as the released code reports


@dataclass
class FitResult:
    """Everything a run produced; the files under `out` hold the same."""

    modalities: list[str]
    prior: torch.Tensor                          # the frozen W of RSC (D x C)
    prior_source: str                            # "spl:<modality>", "w0", "file:<path>"
    spl: list[SPLResult] = field(default_factory=list)
    spl_choice: int | None = None                # index of the modality whose W_k became the prior
    rsc: dict[int, RSCResult] = field(default_factory=dict)
    metrics: list[DirectionResult] = field(default_factory=list)  # [MAP@all, MAP@50] when evaluated


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return device


def output_dim(cfg: DRCLConfig, data: MultiModalData) -> int:
    return data.num_classes if cfg.output_shape == -1 else cfg.output_shape


def planned_outputs(cfg: DRCLConfig, data: MultiModalData, views: list[int]) -> list[Path]:
    d, c = output_dim(cfg, data), data.num_classes
    paths = [outputs.features_path(cfg.out, cfg.datasets, k) for k in views]
    if cfg.prior == "spl":
        paths.append(outputs.prior_path(cfg.out, cfg.datasets, d, c))
        paths += [outputs.prior_path(cfg.out, cfg.datasets, d, c, k) for k in range(data.num_modalities)]
    return paths + [outputs.metrics_path(cfg.out)]


def rsc_settings(cfg: DRCLConfig, lr: float) -> RSCSettings:
    return RSCSettings(lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, hidden_dim=cfg.hidden_shape,
                       alpha=cfg.alpha, beta=cfg.beta, eta=cfg.eta, gamma=cfg.gamma,
                       sample_interval=cfg.sample_interval, seed=cfg.seed, backend=cfg.backend)


def fit(data: MultiModalData, cfg: DRCLConfig, progress: bool = True) -> FitResult:
    """Run DRCL on `data` as `cfg` says, writing the released output files under `cfg.out`."""
    views = [cfg.view_id] if cfg.view_id >= 0 else list(range(data.num_modalities))
    _check(cfg, data, views)
    outputs.refuse_overwrite(planned_outputs(cfg, data, views), cfg.overwrite)
    device = resolve_device(cfg.device)
    ops.check_backend(cfg.backend, device)
    lrs = cfg.learning_rates(data.num_modalities)
    log.info("dataset %s: %d modalities %s, %d classes (%s), D=%d, H=%d, device %s",
             data.name, data.num_modalities, data.modalities, data.num_classes,
             "multi-label" if data.multilabel else "single-label", output_dim(cfg, data),
             cfg.hidden_shape, device)

    result = _prior(cfg, data, device, progress)
    for k in views:
        log.info("RSC on modality %d (%s), lr %g", k, data.modalities[k], lrs[k])
        rsc = train_rsc(ModalityData.from_dataset(data, k, device), result.prior,
                        rsc_settings(cfg, lrs[k]), progress=progress)
        log.info("RSC %s: best epoch %d, validation J %.5f", rsc.modality, rsc.best_epoch, rsc.best_val_loss)
        outputs.save_mat(outputs.features_path(cfg.out, cfg.datasets, k),
                         {"test_fea": rsc.test_embeddings, "test_lab": rsc.test_labels,
                          "test_pred": rsc.test_probabilities})
        result.rsc[k] = rsc
    result.metrics = evaluate_saved(cfg, data, views, result, progress)
    return result


def evaluate_saved(cfg: DRCLConfig, data: MultiModalData, views: list[int], result: FitResult,
                   progress: bool) -> list[DirectionResult]:
    """MAP of every direction, from this run's outputs and, for --view_id runs, earlier ones on disk."""
    embeddings, labels = [], []
    for k in range(data.num_modalities):
        if k in result.rsc:
            embeddings.append(result.rsc[k].test_embeddings)
            labels.append(result.rsc[k].test_labels)
        elif outputs.features_path(cfg.out, cfg.datasets, k).is_file():
            fea, lab = outputs.load_features(cfg.out, cfg.datasets, k)
            embeddings.append(fea)
            labels.append(lab)
        else:
            log.info("evaluation skipped: modality %d has no features file yet (%s); train it with "
                     "--view_id %d", k, outputs.features_path(cfg.out, cfg.datasets, k), k)
            return []
    metrics = [evaluate_directions(embeddings, labels, data.modalities, k=k, backend=cfg.backend,
                                   progress=progress) for k in RETRIEVAL_KS]
    outputs.save_json(outputs.metrics_path(cfg.out), metrics_dict(metrics))
    return metrics


def _prior(cfg: DRCLConfig, data: MultiModalData, device: torch.device, progress: bool) -> FitResult:
    d, c = output_dim(cfg, data), data.num_classes
    w0 = initial_prior(d, c, cfg.seed)
    if cfg.prior == "w0":
        return FitResult(data.modalities, w0, "w0")
    if cfg.prior != "spl":
        path = outputs.prior_path(cfg.out, cfg.datasets, d, c) if cfg.prior == "file" else Path(cfg.prior)
        log.info("prior W read from %s", path)
        return FitResult(data.modalities, torch.from_numpy(outputs.load_prior_file(path, d, c)), f"file:{path}")

    spl = []
    for k in range(data.num_modalities):
        log.info("SPL on modality %d (%s)", k, data.modalities[k])
        r = learn_prior(ModalityData.from_dataset(data, k, device), w0, epochs=cfg.spl_epoch_count,
                        batch_size=cfg.batch_size, lr=cfg.lr_SPL, hidden_dim=cfg.hidden_shape,
                        sample_interval=cfg.sample_interval, seed=cfg.seed, backend=cfg.backend,
                        progress=progress)
        spl.append(r)
        kept = r.final_prior if cfg.released_prior_slip else r.best_prior
        outputs.save_mat(outputs.prior_path(cfg.out, cfg.datasets, d, c, k), {"W": kept.numpy()})
        log.info("SPL %s: best score %.5f at epoch %d", r.modality, r.best_score, r.best_epoch)
    choice, prior = select_prior(spl, cfg.released_prior_slip)
    outputs.save_mat(outputs.prior_path(cfg.out, cfg.datasets, d, c), {"W": prior.numpy()})
    log.info("prior W: SPL's W_k of modality %d (%s), score %.5f", choice, data.modalities[choice],
             spl[choice].best_score)
    return FitResult(data.modalities, prior, f"spl:{data.modalities[choice]}", spl, choice)


def _check(cfg: DRCLConfig, data: MultiModalData, views: list[int]) -> None:
    if cfg.view_id >= data.num_modalities:
        raise ValueError(f"--view_id {cfg.view_id} is out of range: {data.name!r} has modalities "
                         f"0..{data.num_modalities - 1} ({', '.join(data.modalities)})")
    if cfg.prior not in ("spl", "w0", "file") and not Path(cfg.prior).is_file():
        raise ValueError(f"--prior {cfg.prior!r}: not 'spl', 'file', 'w0' or an existing file")
    for k in views:
        n = data.train.features[k].shape[0]
        if n < cfg.batch_size:
            raise ValueError(f"modality {k} ({data.modalities[k]}) has {n} training rows, fewer than one "
                             f"batch of --batch_size {cfg.batch_size}: no full batch to train on; lower it")
    if np.isnan(cfg.gamma) or not 0.0 <= cfg.gamma <= 1.0:
        raise ValueError(f"--gamma {cfg.gamma}: the Mixup coefficient must lie in [0, 1]")
