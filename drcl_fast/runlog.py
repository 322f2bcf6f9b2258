"""Logging for a run: the log file gets everything, the console what a person watches."""
from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # the released main.py's


FILE_ONLY = ("drcl_fast.epochs", "drcl_fast.results")


class _FileOnly(logging.Filter):
    """Per-epoch lines go to the log file only (the progress bar stands for them on the
    console), and so do result lines, which the Solver prints itself."""

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
