"""A whole DRCL run: prior (SPL once), RSC per modality, evaluation, output files."""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from drcl_fast import outputs
from drcl_fast.config import AUTO, DEFAULT_PRECISION, DRCLConfig
from drcl_fast.data.container import MultiModalData
from drcl_fast.errors import ConfigError, NonFiniteLossError, OutputExistsError
from drcl_fast.retrieval import evaluate_directions
from drcl_fast.retrieval.report import DirectionResult, metrics_dict
from drcl_fast.runtime import backends, distributed, interrupt, machine
from drcl_fast.runtime.floor import Floor, UnitShape, forward_flops, matrix_rate, unit_flops
from drcl_fast.runtime.precision import bf16_hint, check_precision, matrix_precision
from drcl_fast.serving.model_folder import TrainedModel
from drcl_fast.serving.of_run import planned_model_files, save_run_model
from drcl_fast.training import lr_search, preflight
from drcl_fast.training.checkpoint import Checkpointer, fingerprint
from drcl_fast.training.modality import ModalityData
from drcl_fast.training.rsc import RSCResult, RSCSettings, reselect_on, train_rsc
from drcl_fast.training.spl import SPLResult, initial_prior, learn_prior, select_prior
from drcl_fast.training.units import Unit, plan, plan_lines, run_concurrently, units_at_once

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
    lr_search: dict[int, dict] = field(default_factory=dict)  # --lr auto: per modality, what the search found
    model: TrainedModel | None = None            # what --out/model/ holds (on the main rank)


def output_dim(cfg: DRCLConfig, data: MultiModalData) -> int:
    return data.num_classes if cfg.output_shape == -1 else cfg.output_shape


def planned_outputs(cfg: DRCLConfig, data: MultiModalData, views: list[int]) -> list[Path]:
    d, c = output_dim(cfg, data), data.num_classes
    paths = [outputs.features_path(cfg.out, cfg.datasets, k) for k in views]
    if cfg.prior == "spl":
        paths.append(outputs.prior_path(cfg.out, cfg.datasets, d, c))
        paths += [outputs.prior_path(cfg.out, cfg.datasets, d, c, k) for k in range(data.num_modalities)]
    return paths + [outputs.metrics_path(cfg.out)] + planned_model_files(cfg, data, views)


def rsc_settings(cfg: DRCLConfig, lr: float | str) -> RSCSettings:
    return RSCSettings(lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, hidden_dim=cfg.hidden_shape,
                       alpha=cfg.alpha, beta=cfg.beta, eta=cfg.eta, gamma=cfg.gamma,
                       sample_interval=cfg.sample_interval, seed=cfg.seed, backend=cfg.backend,
                       precision=cfg.precision)


def fit(data: MultiModalData, cfg: DRCLConfig, progress: bool = True) -> FitResult:
    """Run DRCL on `data` as `cfg` says, writing the released output files under `cfg.out`.

    With `cfg.resume`, an interrupted run with the same settings continues from
    its checkpoint and ends exactly as an uninterrupted one. A Ctrl-C (where Python's
    default handler is in place; the CLI's handles SIGTERM too) stops every unit at its
    next step, once it has saved its checkpoint, and raises `interrupt.Interrupted` (a
    KeyboardInterrupt) saying what stopped and where the checkpoints are.
    """
    check_dataset_name(cfg, data)
    views = preflight.check_run(cfg, data)
    device = machine.resolve_device(distributed.rank_device(cfg.device))
    machine.check_backends(cfg.backend, device)
    check_precision(cfg.precision, device)
    with machine.deterministic_algorithms(cfg.deterministic), matrix_precision(cfg.precision, device), \
            interrupt.on_signals((signal.SIGINT,), only_over_default=True), interrupt.stage("training"):
        try:
            return _fit(data, cfg, views, device, progress)
        except interrupt.Interrupted as stop:
            checkpoints = Checkpointer(cfg.out, cfg.datasets, cfg.view_id, cfg.checkpoint_every, {})
            stop.note_checkpoints(checkpoints.folder, checkpoints.enabled, checkpoints.saved_paths())
            raise


def check_dataset_name(cfg: DRCLConfig, data: MultiModalData) -> None:
    """The outputs and the checkpoint are named after cfg.datasets: it must name the data being fitted."""
    if cfg.datasets != data.name:
        raise ConfigError(
            f"the configuration is for dataset {cfg.datasets!r} (its `datasets` field, which names the output "
            f"files and sets the preset) but the data is {data.name!r}; build it with "
            f"DRCLConfig.preset({data.name!r}, ...) to apply that dataset's settings, or pass DRCL() no config")


def _fit(data: MultiModalData, cfg: DRCLConfig, views: list[int], device: torch.device,
         progress: bool) -> FitResult:
    identity = fingerprint(cfg, data) if cfg.checkpoint_every != 0 or cfg.resume else {}
    checkpointer = Checkpointer(cfg.out, cfg.datasets, cfg.view_id, cfg.checkpoint_every, identity)
    saved = checkpointer.saved_paths() if cfg.resume else []
    if not saved:
        _refuse_unresumed(cfg, data, checkpointer)
        try:
            outputs.refuse_overwrite(planned_outputs(cfg, data, views) if distributed.is_main() else [],
                                     cfg.overwrite)
        except OutputExistsError as error:
            if cfg.resume:  # say why there is nothing to continue
                raise OutputExistsError(f"nothing to resume: no checkpoint in {checkpointer.folder} (a run "
                                        f"removes them when it completes), and {error}") from None
            raise
        if cfg.resume:
            log.info("no checkpoint in %s: starting from the beginning", checkpointer.folder)
    else:
        log.info("resuming from the %d unit checkpoint(s) in %s", len(saved), checkpointer.folder)
    log.info("dataset %s: %d modalities %s, %d classes (%s), D=%d, H=%d, device %s, precision %s",
             data.name, data.num_modalities, data.modalities, data.num_classes,
             "multi-label" if data.multilabel else "single-label", output_dim(cfg, data),
             cfg.hidden_shape, device, cfg.precision)

    run = _Run(cfg, data, device, progress and distributed.is_main(), checkpointer)
    # The floor's rate is the faster of a measurement before training and one after: a machine that
    # slows down for a while (a neighbour's load) does not make the run look closer to its floor.
    rates_before = _matrix_rates(cfg, device)
    started = time.perf_counter()
    result = _prior(run)
    result.phase_seconds["spl"] = time.perf_counter() - started
    sources = cfg.rate_sources(data.num_modalities)
    for line in lr_search.rate_lines(sources, data.modalities, views):
        log.info(line)
    lrs = [rate for rate, _ in sources]
    trained = run.phase("rsc", views, lambda unit: _rsc_unit(run, unit, lrs[unit.view], result.prior))
    units = {k: state for part in distributed.gather_to_main(trained) for k, state in part.items()}
    result.rsc = {k: RSCResult.from_state(state["rsc"]) for k, state in units.items()}
    result.lr_search = {k: state["lr_search"] for k, state in units.items() if state["lr_search"] is not None}
    result.phase_seconds["rsc"] = time.perf_counter() - started - result.phase_seconds["spl"]
    result.train_flops = run.flops
    if run.flops:
        rate, fp32_rate = (max(pair) for pair in zip(rates_before, _matrix_rates(cfg, device)))
        result.floor = Floor(run.flops, rate, result.phase_seconds["spl"] + result.phase_seconds["rsc"],
                             device.type, cfg.precision, None if cfg.precision == DEFAULT_PRECISION else fp32_rate)
        log.info(result.floor.line())
        hint = bf16_hint(cfg.precision, device)
        if hint is not None:
            log.info(hint)
    if distributed.is_main():
        if result.lr_search:
            outputs.save_json(outputs.lr_search_path(cfg.out), {result.modalities[k]: r
                                                                for k, r in sorted(result.lr_search.items())})
        for k in views:
            rsc = result.rsc[k]
            outputs.save_mat(outputs.features_path(cfg.out, cfg.datasets, k),
                             {"test_fea": rsc.test_embeddings, "test_lab": rsc.test_labels,
                              "test_pred": rsc.test_probabilities})
        evaluation = time.perf_counter()
        with interrupt.stage("evaluation"):
            result.metrics = evaluate_saved(cfg, data, views, result, device, run.progress)
        result.phase_seconds["evaluation"] = time.perf_counter() - evaluation
        rates = {k: result.lr_search[k]["chosen"] if k in result.lr_search else lrs[k] for k in result.rsc}
        result.model = save_run_model(cfg, data, result, rates)
    distributed.wait_for_all("outputs written")
    checkpointer.remove()  # the run is complete: its outputs hold everything
    return result


def _matrix_rates(cfg: DRCLConfig, device: torch.device) -> tuple[float, float]:
    """The matrix rate at the run's precision and at float32 (the same measurement for an fp32 run)."""
    rate = matrix_rate(cfg.hidden_shape, cfg.batch_size, device, precision=cfg.precision)
    if cfg.precision == DEFAULT_PRECISION:
        return rate, rate
    return rate, matrix_rate(cfg.hidden_shape, cfg.batch_size, device)


def _refuse_unresumed(cfg: DRCLConfig, data: MultiModalData, checkpointer: Checkpointer) -> None:
    """Checkpoints of an interrupted run in --out, and neither --resume nor --overwrite: say how to continue it
    (or, for another run's, that they are another's). With --overwrite (and no --resume) they go: a run that
    starts over must not resume from them later."""
    if cfg.overwrite and not cfg.resume:
        if distributed.is_main():
            checkpointer.remove()
        distributed.wait_for_all("earlier checkpoints removed")
        return
    saved = checkpointer.saved_paths()
    if cfg.resume or not saved:
        return
    on_disk = checkpointer.identity_on_disk()
    identity = checkpointer.identity or fingerprint(cfg, data)
    if on_disk is not None and on_disk != identity:
        other = " and ".join(k for k in ("settings", "data") if on_disk.get(k) != identity[k])
        raise OutputExistsError(f"{checkpointer.folder} holds the checkpoints of another run (other {other}), "
                                f"e.g. {saved[0]}: run that run's command with --resume to continue it, pass "
                                f"--overwrite to start over (discarding them), or choose another --out directory")
    raise OutputExistsError(f"checkpoints of this run exist in {checkpointer.folder} ({len(saved)} unit file(s); "
                            f"it was interrupted): run the same command with --resume to continue it (or "
                            f"--overwrite to start over, discarding them)")


class _Run:
    """What every unit of one run shares: settings, data, device, checkpoints, and the work done so far."""

    def __init__(self, cfg: DRCLConfig, data: MultiModalData, device: torch.device, progress: bool,
                 checkpointer: Checkpointer) -> None:
        self.cfg, self.data, self.device, self.progress = cfg, data, device, progress
        self.checkpointer = checkpointer
        self.flops = 0   # the encoder products of the units this process trained
        self._lock = threading.Lock()

    def unit(self, phase: str, k: int) -> Unit:
        rows, width = self.data.train.features[k].shape
        cost = forward_flops(rows, width, self.cfg.hidden_shape, output_dim(self.cfg, self.data),
                             self.data.num_classes)
        return Unit(phase, k, self.data.modalities[k], cost)

    def phase(self, phase: str, views: list[int], train: Callable[[Unit], dict]) -> dict[int, dict]:
        """This rank's share of the phase's units trained (or restored), as {view: result state}, once
        every rank is done with its share."""
        assignment = plan([self.unit(phase, k) for k in views], distributed.world_size())
        if distributed.active() and distributed.is_main():
            for line in plan_lines(assignment):
                log.info("%s plan: %s", phase.upper(), line)
        mine = assignment[distributed.rank()]
        if not mine and distributed.active():
            log.info("rank %d has no %s unit: waiting for the others", distributed.rank(), phase.upper())
        at_once, threads = self.concurrency(len(mine))
        if at_once > 1:
            log.info("%s: %d units at once, %d intra-op thread(s) each", phase.upper(), at_once, threads)
        done = run_concurrently(mine, lambda unit: self._named(unit, train), self.device, at_once, threads)
        distributed.wait_for_all(f"{phase} units")
        return {unit.view: state for unit, state in done.items()}

    def concurrency(self, units: int) -> tuple[int, int]:
        """(units at once, intra-op threads each): as configured (units.units_at_once), except under
        Triton's interpreter, which runs one kernel at a time."""
        at_once, threads = units_at_once(self.cfg.concurrent_units, units, self.device)
        if at_once > 1 and backends.interprets_triton(self.cfg.backend, self.device.type):
            backends.say_once(("concurrent_units", "interpreter"), "concurrent_units: Triton's interpreter "
                              "(TRITON_INTERPRET=1) is not thread-safe; training the units one after another")
            return units_at_once(1, units, self.device)
        return at_once, threads

    def resume_point(self, unit: Unit) -> tuple[dict | None, dict | None]:
        """(the unit's saved result, its saved progress): what its checkpoint holds, if any."""
        record = self.checkpointer.load(unit.phase, unit.view) if self.cfg.resume else None
        if record is None:
            return None, None
        return (record["result"], None) if record["done"] else (None, record["progress"])

    def count(self, shape: UnitShape) -> None:
        with self._lock:
            self.flops += unit_flops(shape)

    def _named(self, unit: Unit, train: Callable[[Unit], dict]) -> dict:
        """train(unit), its failure said with the unit (and the rank) and where its last checkpoint is."""
        try:
            return train(unit)
        except interrupt.Interrupted as stop:   # stopped on request, its checkpoint saved: no traceback
            stop.units.append(unit)
            raise
        except NonFiniteLossError as error:
            if not self.checkpointer.enabled:
                raise
            raise NonFiniteLossError(f"{error}. The last good checkpoint "
                                     f"({unit.phase} modality {unit.view}, "
                                     f"{self.checkpointer.last_saved(unit.phase, unit.view)}) is "
                                     f"{self.checkpointer.path(unit.phase, unit.view)}") from None
        except BaseException as error:
            where = f"rank {distributed.rank()} stopped in {unit.label}" if distributed.active() else \
                f"stopped in {unit.label}"
            error.add_note(where)   # shown with the traceback, which torchrun prints with the rank
            if distributed.active():
                log.error(where)
            raise


def unit_shape(cfg: DRCLConfig, m: ModalityData, d: int, c: int, phase: str, resume: dict | None) -> UnitShape:
    """The sizes of one unit's epochs still to train, for its matrix floor."""
    epochs = cfg.spl_epoch_count if phase == "spl" else cfg.epochs
    start = resume["epoch"] if resume else 0
    return UnitShape(train_rows=m.train_x.shape[0], eval_rows=(m.train_x if phase == "spl" else m.valid_x).shape[0],
                     input_dim=m.input_dim, hidden_dim=cfg.hidden_shape, output_dim=d, classes=c,
                     batch_size=cfg.batch_size, epochs=epochs - start,
                     sampled_epochs=epochs // cfg.sample_interval - start // cfg.sample_interval,
                     trains_prior=phase == "spl")


def _rsc_unit(run: _Run, unit: Unit, lr: float | str, prior: torch.Tensor) -> dict:
    """Modality k's RSC unit, {"rsc": result state, "lr_search": record or None}: restored if its
    checkpoint holds it, else trained (resumed if started); with lr "auto", after the search."""
    done, resume = run.resume_point(unit)
    if done is not None:
        rsc, record = RSCResult.from_state(done["rsc"]), done["lr_search"]
    else:
        m = ModalityData.from_dataset(run.data, unit.view, run.device)
        settings = rsc_settings(run.cfg, lr)
        record = None
        if lr == AUTO:
            record, resume = _search_rate(run, unit, m, prior, settings, resume)
            settings.lr = record["chosen"]
        log.info("RSC on modality %d (%s), lr %g%s%s", unit.view, unit.name, settings.lr,
                 " (searched)" if record is not None else "",
                 f", resumed after epoch {resume['epoch']}" if resume else "")
        run.count(unit_shape(run.cfg, m, *prior.shape, "rsc", resume))
        started = time.perf_counter()
        rsc = train_rsc(m, prior, settings, progress=run.progress, resume=resume,
                        on_epoch=run.checkpointer.epoch_hook("rsc", unit.view, {"lr_search": record}),
                        on_stop=run.checkpointer.stop_hook("rsc", unit.view, {"lr_search": record}))
        run.checkpointer.save_done("rsc", unit.view, {"rsc": rsc.to_state(), "lr_search": record})
    timing = "from its checkpoint, " if done is not None else _took(run.cfg.epochs, resume, started)
    log.info("RSC %s: %sbest epoch %d, validation J %.5f", rsc.modality, timing, rsc.best_epoch, rsc.best_val_loss)
    return {"rsc": rsc.to_state(), "lr_search": record}


def _took(epochs: int, resume: dict | None, started: float) -> str:
    """What a unit's end line says it trained, and in how long ("40 epochs in 13.2 s, "): off a terminal,
    with no progress bar (progress.py), its start and end lines are what a unit shows."""
    trained = epochs - (resume["epoch"] if resume else 0)
    return f"{trained} epoch{'s' if trained != 1 else ''} in {time.perf_counter() - started:.1f} s, "


def _search_rate(run: _Run, unit: Unit, m: ModalityData, prior: torch.Tensor, settings: RSCSettings,
                 resume: dict | None) -> tuple[dict, dict | None]:
    """(the search's record, the state the chosen rate's run continues from): searched, or as saved."""
    if resume is not None and resume.get("lr_search") is not None:   # the search ended before the kill
        return resume["lr_search"], resume
    log.info("RSC on modality %d (%s): searching the learning rate (%s)", unit.view, unit.name,
             run.cfg.lr_criterion)
    found, winner = lr_search.search(
        m, prior, settings, run.cfg.lr_criterion, state=None if resume is None else resume["search"],
        on_round=lambda state: run.checkpointer.save_progress(
            "rsc", unit.view, {"search": state}, f"learning-rate search, round {state['round']}"),
        progress=run.progress)
    run.count(dataclasses.replace(unit_shape(run.cfg, m, *prior.shape, "rsc", None),
                                  epochs=found.epochs_trained,
                                  sampled_epochs=found.epochs_trained // run.cfg.sample_interval))
    for line in found.table():
        log.info(line)
    return dataclasses.asdict(found), reselect_on(m, winner, prior, settings)


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


def _spl_unit(run: _Run, unit: Unit, w0: torch.Tensor) -> dict:
    """Modality k's SPL result state: restored if its checkpoint holds it, else trained (resumed if started)."""
    done, resume = run.resume_point(unit)
    if done is not None:
        return done
    cfg = run.cfg
    log.info("SPL on modality %d (%s)%s", unit.view, unit.name,
             f", resumed after epoch {resume['epoch']}" if resume else "")
    m = ModalityData.from_dataset(run.data, unit.view, run.device)
    run.count(unit_shape(cfg, m, *w0.shape, "spl", resume))
    started = time.perf_counter()
    r = learn_prior(m, w0, epochs=cfg.spl_epoch_count, batch_size=cfg.batch_size, lr=cfg.lr_SPL,
                    hidden_dim=cfg.hidden_shape, sample_interval=cfg.sample_interval, seed=cfg.seed,
                    backend=cfg.backend, precision=cfg.precision, progress=run.progress, resume=resume,
                    on_epoch=run.checkpointer.epoch_hook("spl", unit.view),
                    on_stop=run.checkpointer.stop_hook("spl", unit.view))
    run.checkpointer.save_done("spl", unit.view, r.to_state())
    log.info("SPL %s: %sbest score %.5f at epoch %d", r.modality, _took(cfg.spl_epoch_count, resume, started),
             r.best_score, r.best_epoch)
    return r.to_state()


def _prior(run: _Run) -> FitResult:
    """The frozen prior W of RSC, from SPL (every rank makes the same choice), W0 or a file."""
    cfg, data = run.cfg, run.data
    d, c = output_dim(cfg, data), data.num_classes
    w0 = initial_prior(d, c, cfg.seed)
    if cfg.prior == "w0":
        return FitResult(data.modalities, w0, "w0")
    if cfg.prior != "spl":
        path = outputs.prior_path(cfg.out, cfg.datasets, d, c) if cfg.prior == "file" else Path(cfg.prior)
        log.info("prior W read from %s", path)
        return FitResult(data.modalities, torch.from_numpy(outputs.load_prior_file(path, d, c)), f"file:{path}")

    trained = run.phase("spl", list(range(data.num_modalities)), lambda unit: _spl_unit(run, unit, w0))
    states = {k: state for part in distributed.all_gather(trained) for k, state in part.items()}
    spl = [SPLResult.from_state(states[k]) for k in range(data.num_modalities)]
    choice, prior = select_prior(spl, cfg.released_prior_slip)
    if distributed.is_main():
        for k, r in enumerate(spl):
            kept = r.final_prior if cfg.released_prior_slip else r.best_prior
            outputs.save_mat(outputs.prior_path(cfg.out, cfg.datasets, d, c, k), {"W": kept.numpy()})
        outputs.save_mat(outputs.prior_path(cfg.out, cfg.datasets, d, c), {"W": prior.numpy()})
    log.info("prior W: SPL's W_k of modality %d (%s), score %.5f", choice, data.modalities[choice],
             spl[choice].best_score)
    return FitResult(data.modalities, prior, f"spl:{data.modalities[choice]}", spl, choice)
