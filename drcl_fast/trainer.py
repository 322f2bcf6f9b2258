"""A whole DRCL run: prior (SPL once), RSC per modality, evaluation, output files."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drcl_fast import outputs, preflight, runtime
from drcl_fast.checkpoint import Checkpointer, fingerprint
from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import MultiModalData
from drcl_fast.errors import ConfigError, NonFiniteLossError, OutputExistsError
from drcl_fast.floor import Floor, UnitShape, matrix_rate, unit_flops
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
    phase_seconds: dict[str, float] = field(default_factory=dict)   # "spl", "rsc", "evaluation": wall time
    train_flops: int = 0                         # the encoder products of the units this call trained
    floor: Floor | None = None                   # their time against the machine's matrix rate (floor.py)


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
    """Run DRCL on `data` as `cfg` says, writing the released output files under `cfg.out`.

    With `cfg.resume`, an interrupted run with the same settings continues from
    its checkpoint and ends exactly as an uninterrupted one.
    """
    check_dataset_name(cfg, data)
    views = preflight.check_run(cfg, data)
    device = runtime.resolve_device(cfg.device)
    runtime.check_backends(cfg.backend, device)
    with runtime.deterministic_algorithms(cfg.deterministic):
        return _fit(data, cfg, views, device, progress)


def check_dataset_name(cfg: DRCLConfig, data: MultiModalData) -> None:
    """The outputs and the checkpoint are named after cfg.datasets: it must name the data being fitted."""
    if cfg.datasets != data.name:
        raise ConfigError(
            f"the configuration is for dataset {cfg.datasets!r} (its `datasets` field, which names the output "
            f"files and sets the preset) but the data is {data.name!r}; build it with "
            f"DRCLConfig.preset({data.name!r}, ...) to apply that dataset's settings, or pass DRCL() no config")


def _fit(data: MultiModalData, cfg: DRCLConfig, views: list[int], device: torch.device,
         progress: bool) -> FitResult:
    lrs = cfg.learning_rates(data.num_modalities)
    identity = fingerprint(cfg, data) if cfg.checkpoint_every != 0 or cfg.resume else {}
    checkpointer = Checkpointer(cfg.out, cfg.datasets, cfg.view_id, cfg.checkpoint_every, identity)
    state = checkpointer.load() if cfg.resume else None
    if state is None:
        try:
            outputs.refuse_overwrite(planned_outputs(cfg, data, views), cfg.overwrite)
        except OutputExistsError as error:
            if cfg.resume:  # say why there is nothing to continue
                raise OutputExistsError(f"nothing to resume: no checkpoint at {checkpointer.path} (a run "
                                        f"removes it when it completes), and {error}") from None
            raise
        if cfg.resume:
            log.info("no checkpoint at %s: starting from the beginning", checkpointer.path)
        state = checkpointer.fresh_state()
    else:
        log.info("resuming from %s", checkpointer.path)
    log.info("dataset %s: %d modalities %s, %d classes (%s), D=%d, H=%d, device %s",
             data.name, data.num_modalities, data.modalities, data.num_classes,
             "multi-label" if data.multilabel else "single-label", output_dim(cfg, data),
             cfg.hidden_shape, device)

    started = time.perf_counter()
    try:
        result = _prior(cfg, data, device, progress, state, checkpointer)
        result.phase_seconds["spl"] = time.perf_counter() - started
        for k in views:
            result.rsc[k] = _rsc_unit(cfg, data, k, lrs[k], result, device, progress, state, checkpointer)
        result.phase_seconds["rsc"] = time.perf_counter() - started - result.phase_seconds["spl"]
    except NonFiniteLossError as error:
        raise NonFiniteLossError(f"{error}. The last good checkpoint ({checkpointer.last_saved}) is "
                                 f"{checkpointer.path}" if checkpointer.enabled else str(error)) from None
    if result.train_flops:
        result.floor = Floor(result.train_flops, matrix_rate(cfg.hidden_shape, cfg.batch_size, device),
                             result.phase_seconds["spl"] + result.phase_seconds["rsc"])
        log.info(result.floor.line())
    evaluation = time.perf_counter()
    result.metrics = evaluate_saved(cfg, data, views, result, device, progress)
    result.phase_seconds["evaluation"] = time.perf_counter() - evaluation
    checkpointer.remove()  # the run is complete: its outputs hold everything
    return result


def unit_shape(cfg: DRCLConfig, m: ModalityData, d: int, c: int, phase: str, resume: dict | None) -> UnitShape:
    """The sizes of one unit's epochs still to train, for its matrix floor."""
    epochs = cfg.spl_epoch_count if phase == "spl" else cfg.epochs
    start = resume["epoch"] if resume else 0
    return UnitShape(train_rows=m.train_x.shape[0], eval_rows=(m.train_x if phase == "spl" else m.valid_x).shape[0],
                     input_dim=m.input_dim, hidden_dim=cfg.hidden_shape, output_dim=d, classes=c,
                     batch_size=cfg.batch_size, epochs=epochs - start,
                     sampled_epochs=epochs // cfg.sample_interval - start // cfg.sample_interval,
                     trains_prior=phase == "spl")


def _rsc_unit(cfg: DRCLConfig, data: MultiModalData, k: int, lr: float, result: FitResult,
              device: torch.device, progress: bool, state: dict, checkpointer: Checkpointer) -> RSCResult:
    """Modality k's RSC result: restored if a checkpoint holds it, else trained (resumed if started)."""
    if k in state["rsc_done"]:
        rsc = RSCResult.from_state(state["rsc_results"][k])
    else:
        unit = state["unit"]
        resume = unit if unit is not None and (unit["phase"], unit["view"]) == ("rsc", k) else None
        log.info("RSC on modality %d (%s), lr %g%s", k, data.modalities[k], lr,
                 f", resumed after epoch {resume['epoch']}" if resume else "")
        m = ModalityData.from_dataset(data, k, device)
        result.train_flops += unit_flops(unit_shape(cfg, m, *result.prior.shape, "rsc", resume))
        rsc = train_rsc(m, result.prior, rsc_settings(cfg, lr),
                        progress=progress, resume=resume, on_epoch=checkpointer.epoch_hook(state, "rsc", k))
        checkpointer.save_unit(k, rsc.to_state())
        state["rsc_done"].append(k)
        state["unit"] = None
        checkpointer.save(state, f"rsc modality {k} done")
    log.info("RSC %s: best epoch %d, validation J %.5f", rsc.modality, rsc.best_epoch, rsc.best_val_loss)
    outputs.save_mat(outputs.features_path(cfg.out, cfg.datasets, k),
                     {"test_fea": rsc.test_embeddings, "test_lab": rsc.test_labels,
                      "test_pred": rsc.test_probabilities})
    return rsc


def evaluate_saved(cfg: DRCLConfig, data: MultiModalData, views: list[int], result: FitResult,
                   device: torch.device, progress: bool) -> list[DirectionResult]:
    """MAP of every direction, from this run's outputs and, for --view_id runs, earlier ones on disk.

    Ranked on the training device, so that a GPU run evaluates there too.
    """
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
    embeddings = [torch.from_numpy(e).to(device) for e in embeddings]
    metrics = [evaluate_directions(embeddings, labels, data.modalities, k=k, backend=cfg.backend,
                                   progress=progress) for k in RETRIEVAL_KS]
    outputs.save_json(outputs.metrics_path(cfg.out), metrics_dict(metrics))
    return metrics


def _prior(cfg: DRCLConfig, data: MultiModalData, device: torch.device, progress: bool,
           state: dict, checkpointer: Checkpointer) -> FitResult:
    d, c = output_dim(cfg, data), data.num_classes
    w0 = initial_prior(d, c, cfg.seed)
    if cfg.prior == "w0":
        return FitResult(data.modalities, w0, "w0")
    if cfg.prior != "spl":
        path = outputs.prior_path(cfg.out, cfg.datasets, d, c) if cfg.prior == "file" else Path(cfg.prior)
        log.info("prior W read from %s", path)
        return FitResult(data.modalities, torch.from_numpy(outputs.load_prior_file(path, d, c)), f"file:{path}")

    spl = [SPLResult.from_state(r) for r in state["spl_done"]]
    flops = 0
    for k in range(len(spl), data.num_modalities):
        unit = state["unit"]
        resume = unit if unit is not None and (unit["phase"], unit["view"]) == ("spl", k) else None
        log.info("SPL on modality %d (%s)%s", k, data.modalities[k],
                 f", resumed after epoch {resume['epoch']}" if resume else "")
        m = ModalityData.from_dataset(data, k, device)
        flops += unit_flops(unit_shape(cfg, m, d, c, "spl", resume))
        r = learn_prior(m, w0, epochs=cfg.spl_epoch_count,
                        batch_size=cfg.batch_size, lr=cfg.lr_SPL, hidden_dim=cfg.hidden_shape,
                        sample_interval=cfg.sample_interval, seed=cfg.seed, backend=cfg.backend,
                        progress=progress, resume=resume, on_epoch=checkpointer.epoch_hook(state, "spl", k))
        spl.append(r)
        state["spl_done"].append(r.to_state())
        state["unit"] = None
        checkpointer.save(state, f"spl modality {k} done")
        log.info("SPL %s: best score %.5f at epoch %d", r.modality, r.best_score, r.best_epoch)
    for k, r in enumerate(spl):
        kept = r.final_prior if cfg.released_prior_slip else r.best_prior
        outputs.save_mat(outputs.prior_path(cfg.out, cfg.datasets, d, c, k), {"W": kept.numpy()})
    choice, prior = select_prior(spl, cfg.released_prior_slip)
    outputs.save_mat(outputs.prior_path(cfg.out, cfg.datasets, d, c), {"W": prior.numpy()})
    log.info("prior W: SPL's W_k of modality %d (%s), score %.5f", choice, data.modalities[choice],
             spl[choice].best_score)
    return FitResult(data.modalities, prior, f"spl:{data.modalities[choice]}", spl, choice, train_flops=flops)
