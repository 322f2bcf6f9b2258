"""Logging for a run: the log file gets everything, the console what a person watches."""
from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # the released main.py's


FILE_ONLY = ("drcl_fast.epochs", "drcl_fast.results")


class _FileOnly(logging.Filter):
    """Per-epoch lines go to the log file only (on the console a unit's progress bar stands for
    them on a terminal, its start and end lines elsewhere: progress.py), and so do result lines,
    which the Solver prints itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(FILE_ONLY)


def setup_run_logging(out: str | Path, dataset: str, quiet: bool, rank: int = 0) -> logging.Logger:
    """Log to `out/logging/{dataset}.log` (appending, as the released code does) and the console.

    Under torchrun, rank r > 0 logs to `{dataset}.rank{r}.log` and shows only its
    warnings and errors on the console, marked with its rank: rank 0 reports the run.
    `quiet` keeps only errors on the console.
    """
    logger = logging.getLogger("drcl_fast")
    logger.setLevel(logging.DEBUG)  # DEBUG lines (the arguments) reach the file only
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    path = Path(out) / "logging" / (f"{dataset}.log" if rank == 0 else f"{dataset}.rank{rank}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path)
    file_handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(file_handler)
    console = logging.StreamHandler()
    # Quiet runs keep their errors on the console: under torchrun, the line that names the failed unit.
    console.setLevel(logging.ERROR if quiet else logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    console.addFilter(_FileOnly())
    logger.addHandler(console)
    logger.propagate = False
    return logger


def output_lines(out: str | Path, dataset: str, result) -> list[str]:
    """Where a finished train run's outputs went, a line each, under `out` (the --out prefix).

    `result` is the run's trainer.FitResult: only what this run wrote is listed (a --view_id run
    writes its modality's features, a run given its prior no PriorW/)."""
    from drcl_fast import outputs   # here: runlog is imported before the rest of the package is needed

    out = Path(out)
    rows = []
    if result.prior_source.startswith("spl"):
        rows.append((out / "PriorW", f"the prior W and each modality's W_k ({len(result.spl) + 1} files, read back "
                                     f"with --wselect False or --prior)"))
    if result.rsc:
        count = len(result.rsc)
        rows.append((out / "features", f"test embeddings, labels and class probabilities ({count} "
                                       f"{'modality' if count == 1 else 'modalities'}; drcl-fast eval reads them)"))
    rows.append((out / "logging" / f"{dataset}.log", "the arguments, every epoch's losses and the result lines"))
    if result.metrics:
        rows.append((outputs.metrics_path(out), "MAP@all and MAP@50 of every direction"))
    if result.lr_search:
        rows.append((outputs.lr_search_path(out), "what --lr auto tried and chose, per modality"))
    if result.model is not None:
        count = len(result.model.encoders)
        rows.append((out / "model", f"the trained model ({count} encoder{'' if count == 1 else 's'} and the prior): "
                                    f"drcl_fast.load_model, drcl-fast index / search / export"))
    names = [f"{path}{'/' if path.suffix == '' else ''}" for path, _ in rows]
    width = max(len(name) for name in names)
    return ["outputs:"] + [f"  {name:<{width}}  {what}" for name, (_, what) in zip(names, rows)]
