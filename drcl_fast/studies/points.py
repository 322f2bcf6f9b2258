"""What every study shares: its points, their records on disk, resume, and the ranks they run on.

A study is a list of *points*, each the `train` run with a few settings changed
(α and β for the sweep, the prior, a variant and a seed for the ablation). Points
come in *stages*: a later stage's points may reuse a prior that an earlier stage's
point learned with SPL, so that SPL, which does not depend on α, β or γ, trains
once. Layout under `--out/<study>/`:

    points/<point>.json      one record per finished point: settings, data digest, metrics, time
    runs/<point>/            the point's own run: PriorW/, features/, metrics.json, logging/, checkpoints/
    logging/{dataset}.log    the study's log (rank r > 0: {dataset}.rank{r}.log)

A record is written atomically the moment its point ends. `--resume` keeps every
record whose settings match the point's (and refuses one saved with other
settings); the point that was interrupted continues from its own checkpoints.
Under torchrun the points of a stage are spread over the ranks, every rank
computing the same plan, and each point trains all its units in its rank
(`distributed.alone()`); the ranks then exchange the records, so that every rank
knows every result, and rank 0 writes the study's tables and pictures.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from drcl_fast import outputs
from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import MultiModalData
from drcl_fast.errors import CheckpointError, ConfigError, OutputExistsError
from drcl_fast.retrieval.report import metrics_dict
from drcl_fast.runtime import distributed, interrupt
from drcl_fast.runtime.progress import bars
from drcl_fast.runtime.runlog import FORMAT
from drcl_fast.training.checkpoint import NOT_IN_FINGERPRINT, fingerprint
from drcl_fast.training.preflight import check_run
from drcl_fast.training.trainer import FitResult, fit, output_dim
from drcl_fast.training.units import Unit, plan, plan_lines

log = logging.getLogger("drcl_fast.studies")

RECORD_VERSION = 1
# A point whose prior comes from elsewhere trains no SPL, so the SPL-only settings must be unset
# (preflight refuses them otherwise); the prior's own content stands for them in the record.
NO_SPL = {"spl_epochs": None, "released_prior_slip": False}


@dataclass(frozen=True)
class Point:
    """One run of a study: the train run with `changes` (DRCLConfig fields) on top.

    `name` names its record and its run folder (letters, digits, `.`, `_`, `-`, `=`);
    `labels` are what the study's tables show for it (say {"alpha": 0.1, "beta": 0.0}).
    """

    name: str
    changes: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyResult:
    """A study's records by point name (on every rank), and what it wrote (on rank 0; elsewhere nothing)."""

    records: dict[str, dict]
    files: list[Path]
    summary: str   # its markdown tables, as printed


# A stage: its points, made from the records of the stages before it (by point name).
Stage = Callable[[dict[str, dict]], list[Point]]


def point_name(**parts: Any) -> str:
    """A file-safe point name from its parts, e.g. alpha=0.1_beta=0.0 (floats in full: no two collide)."""
    text = "_".join(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in parts.items())
    return re.sub(r"[^A-Za-z0-9._=-]", "-", text)


class Study:
    """The points of one study under `--out/<name>/`: run, restored on resume, spread over the ranks.

    Args:
        name: the study's folder under `base.out` ("sweep", "priors", "ablate").
        base: the train run's configuration (from the flags); every point is it with its changes.
        data: the dataset every point trains on.
        total: the number of points of all stages (for the progress bar).
        files: the study's own files (tables, pictures), which a fresh study must not overwrite.
    """

    def __init__(self, name: str, base: DRCLConfig, data: MultiModalData, total: int,
                 files: Sequence[Path] = ()) -> None:
        if base.prior == "file":   # train's PriorW/ file under --out: every point runs in a folder of its own
            base = base.replace(prior=str(outputs.prior_path(base.out, data.name, output_dim(base, data),
                                                             data.num_classes)))
        self.name, self.base, self.data, self.total = name, base, data, total
        self.folder = Path(base.out) / name
        self.files = list(files)
        self.digest = fingerprint(base, data)["data"]
        # Computed here, in the group: inside alone() every rank would take the first GPU.
        self.device = distributed.rank_device(base.device)
        self.progress = not base.quiet and distributed.is_main()

    def record_path(self, point: str) -> Path:
        return self.folder / "points" / f"{point}.json"

    def run_folder(self, point: str) -> Path:
        return self.folder / "runs" / point

    def learned_prior(self, point: str, k: int | None = None) -> dict[str, Any]:
        """Changes that make a point reuse the prior `point` learned with SPL (`k`: modality k's W_k).

        Raises:
            ConfigError: this rank cannot see the file (under torchrun on machines that share no --out).
        """
        d, c = output_dim(self.base, self.data), self.data.num_classes
        learned = outputs.prior_path(self.run_folder(point), self.data.name, d, c, k)
        if not learned.is_file():
            raise ConfigError(f"rank {distributed.rank()}: the prior that point {point} learned, {learned}, is not "
                              f"there (if its run folder was removed, pass --overwrite to train the study again); "
                              f"under torchrun on several machines, --out must be a folder every rank sees")
        return {"prior": str(learned), **NO_SPL}

    def config(self, point: Point) -> DRCLConfig:
        """The point's configuration as recorded: the base with its changes, in its own run folder."""
        return self.base.replace(**point.changes, out=str(self.run_folder(point.name)))

    def settings(self, cfg: DRCLConfig) -> dict[str, Any]:
        """What a point's result depends on (as its record holds it): a file prior by its content."""
        kept = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_FINGERPRINT}
        if cfg.prior not in ("spl", "w0"):
            d, c = output_dim(cfg, self.data), self.data.num_classes
            matrix = outputs.load_prior_file(cfg.prior, d, c)
            kept["prior"] = "sha256:" + hashlib.sha256(matrix.tobytes()).hexdigest()
        return json.loads(json.dumps(kept))   # as it reads back from the record

    def run(self, stages: Sequence[Stage]) -> dict[str, dict]:
        """Every stage's points trained, or restored from their records with --resume.

        Returns:
            Every point's record by point name, on every rank.

        Raises:
            OutputExistsError: an earlier study is in the folder and neither --resume nor --overwrite is given.
            ConfigError: a saved point has other settings than the point now (with --resume).
            CheckpointError: a saved point's record cannot be read.
            interrupt.Interrupted: stopped on request (Ctrl-C, SIGTERM); --resume continues.
        """
        try:
            with interrupt.stage(f"the {self.name} study"):
                return self._run(stages)
        except interrupt.Interrupted as stop:
            if not stop.resumable:   # the finished points are kept all the same
                stop.saved = (f"finished points in {self.folder / 'points'}"
                              + (f" ({stop.point} starts over)" if stop.point else ""))
            stop.resumable = True
            raise

    def _run(self, stages: Sequence[Stage]) -> dict[str, dict]:
        self._refuse_earlier_study()
        distributed.wait_for_all(f"{self.name}: folder checked")   # before any rank writes into it
        records: dict[str, dict] = {}
        with tqdm(total=self.total, desc=self.name, unit="point", disable=not bars(self.progress),
                  dynamic_ncols=True) as bar, _console_above(bar):
            for number, stage in enumerate(stages):
                points = stage(records)
                for point in points:  # bad settings stop the stage before any of its points trains
                    check_run(self._run_config(point), self.data)
                done = {point.name: self._point(point, bar) for point in self._share(points)}
                distributed.wait_for_all(f"{self.name}: stage {number}")   # points end far apart: no timeout
                for part in distributed.all_gather(done):
                    records.update(part)
                bar.n = len(records)
                bar.refresh()
        return records

    def _refuse_earlier_study(self) -> None:
        if self.base.resume or self.base.overwrite:
            return
        runs = self.folder / "runs"
        # Run folders count once something is in them: a check before training creates them empty.
        earlier = [*sorted((self.folder / "points").glob("*.json")),
                   *(run for run in (sorted(runs.iterdir()) if runs.is_dir() else []) if any(run.iterdir())),
                   *(path for path in self.files if path.exists())]
        if earlier:
            raise OutputExistsError(
                f"{self.folder} holds an earlier {self.name} study ({len(earlier)} file(s) and run folder(s), "
                f"first {earlier[0]}); pass --resume to continue it (finished points with the same settings "
                f"are kept), --overwrite to train it again, or choose another --out")

    def _share(self, points: list[Point]) -> list[Point]:
        """This rank's points: every rank plans the same, longest first to the least loaded rank."""
        def cost(point: Point) -> int:
            cfg = self.config(point)
            return cfg.epochs + (cfg.spl_epoch_count if cfg.prior == "spl" else 0)

        units = [Unit("point", i, p.name, cost(p)) for i, p in enumerate(points)]
        assignment = plan(units, distributed.world_size())
        if distributed.active() and distributed.is_main():
            for line in plan_lines(assignment):
                log.info("%s plan: %s", self.name, line.replace("POINT ", ""))
        return [points[unit.view] for unit in assignment[distributed.rank()]]

    def _run_config(self, point: Point) -> DRCLConfig:
        """The point's configuration as it trains: on this rank's device; --resume continues its checkpoints."""
        resume = self.base.resume
        # On resume, a point without a checkpoint starts over: files it left are its own, so overwrite them.
        return self.config(point).replace(device=self.device, resume=resume, overwrite=resume or self.base.overwrite)

    def _point(self, point: Point, bar: tqdm) -> dict:
        """The point's record: kept from disk (--resume, same settings), else trained and saved at once."""
        cfg = self.config(point)
        settings = self.settings(cfg)
        record = self._saved(point, settings) if self.base.resume else None
        if record is not None:
            log.info("%s %s: kept from %s", self.name, point.name, self.record_path(point.name))
        else:
            started = time.perf_counter()
            with distributed.alone(), _point_log(Path(cfg.out), self.data.name, cfg):
                # The study's bar stands for the point's epoch and MAP bars; its log file has every epoch.
                try:
                    result = fit(self.data, self._run_config(point), progress=False)
                except interrupt.Interrupted as stop:
                    stop.point = f"{self.name} point {point.name}"
                    raise
            record = self._record(point, cfg, settings, result, time.perf_counter() - started)
            outputs.save_json(self.record_path(point.name), record)
            log.info("%s %s: MAP@all %.5f, MAP@50 %.5f (%.1f s)", self.name, point.name,
                     record["metrics"]["map_all"]["mean"], record["metrics"]["map_50"]["mean"], record["seconds"])
        bar.update(1)
        bar.set_postfix_str(f"{point.name}: MAP@all {record['metrics']['map_all']['mean']:.4f}")
        return record

    def _record(self, point: Point, cfg: DRCLConfig, settings: dict, result: FitResult, seconds: float) -> dict:
        return {"version": RECORD_VERSION, "study": self.name, "point": point.name, "labels": point.labels,
                "settings": settings, "data": self.digest,
                "prior_file": cfg.prior if cfg.prior not in ("spl", "w0") else None,
                "prior_source": result.prior_source, "spl_choice": result.spl_choice,
                "metrics": metrics_dict(result.metrics), "seconds": seconds,
                "run": str(self.run_folder(point.name).relative_to(self.folder))}

    def _saved(self, point: Point, settings: dict) -> dict | None:
        """The point's finished record if it has one, provided it was made with these settings and data."""
        path = self.record_path(point.name)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            version, saved_settings, saved_data = record["version"], record["settings"], record["data"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: cannot read the record of point {point.name} ({error}); delete it "
                                  f"to train the point again") from None
        if version != RECORD_VERSION:
            raise CheckpointError(f"{path}: the record of point {point.name} was written by another version of "
                                  f"drcl_fast (record version {version}, this one reads {RECORD_VERSION}); pass "
                                  f"--overwrite to train the study again, or choose another --out")
        if saved_data != self.digest:
            raise ConfigError(f"{path}: point {point.name} was trained on other data ({saved_data}, now "
                              f"{self.digest}); resume with the same data, or pass --overwrite to train the "
                              f"study again, or choose another --out")
        if saved_settings != settings:
            differ = "; ".join(f"{key} {saved_settings.get(key)!r} there, {settings.get(key)!r} now"
                               for key in sorted(set(saved_settings) | set(settings))
                               if saved_settings.get(key) != settings.get(key))
            raise ConfigError(f"{path}: point {point.name} was trained with other settings ({differ}); resume "
                              f"with the flags it was trained with, pass --overwrite to train the study again, "
                              f"or choose another --out")
        return record


class _AboveBars:
    """A console stream whose lines tqdm prints above its bars, instead of through them."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def _console_above(bar: tqdm) -> Iterator[None]:
    """Within: the study's console log lines print above the progress bar (levels and filters kept)."""
    # Exactly StreamHandler: the file handlers are StreamHandlers too. No bar, nothing to print above.
    consoles = [] if bar.disable else [h for h in logging.getLogger("drcl_fast").handlers
                                       if type(h) is logging.StreamHandler]
    saved = [handler.setStream(_AboveBars(handler.stream)) for handler in consoles]
    try:
        yield
    finally:
        for handler, stream in zip(consoles, saved):
            handler.setStream(stream)


@contextmanager
def _point_log(folder: Path, dataset: str, cfg: DRCLConfig) -> Iterator[None]:
    """Within: the run's log lines go to the point's own `logging/{dataset}.log` (only), as a train run's
    would; the study's handlers come back after, so its console shows the study, not every epoch."""
    logger = logging.getLogger("drcl_fast")
    saved = logger.handlers[:], logger.level, logger.propagate
    path = folder / "logging" / f"{dataset}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    logger.debug("arguments: %s", cfg.to_dict())
    try:
        yield
    finally:
        handler.close()
        logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def check_weights(flag: str, values: Sequence[float]) -> list[float]:
    """`values` of a study's list flag as floats: each a finite number >= 0, none twice.

    Raises:
        ConfigError: a value is negative, not finite, or listed twice.
    """
    for value in values:
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {value}: a loss weight must be a finite number >= 0")
    twice = sorted({v for v in values if list(values).count(v) > 1})
    if twice:
        raise ConfigError(f"{flag} lists {', '.join(f'{v:g}' for v in twice)} more than once; give each value once")
    return [float(v) for v in values]


def check_study_flags(cfg: DRCLConfig, command: str) -> None:
    """Train flags that cannot work in a study: it scores every direction, so trains every modality.

    Raises:
        ConfigError: --view_id or --running_time is given.
    """
    if cfg.view_id != -1:
        raise ConfigError(f"--view_id {cfg.view_id}: drcl-fast {command} scores every direction, so each point "
                          f"trains every modality; drop --view_id")
    if cfg.extra.get("running_time"):
        raise ConfigError(f"--running_time skips the evaluation, and drcl-fast {command} compares MAP; drop it")
