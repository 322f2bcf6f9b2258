"""Drop-in replacement for the released `DRCL.Solver`: same constructor, same files, same lines."""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from drcl_fast.data import load_dataset
from drcl_fast.flags import add_train_flags, config_from_flags
from drcl_fast.retrieval.report import result_line
from drcl_fast.runtime import distributed
from drcl_fast.training.trainer import FitResult, fit


def released_defaults() -> argparse.Namespace:
    """The namespace the released main.py builds when given no flags."""
    parser = argparse.ArgumentParser(add_help=False)
    add_train_flags(parser)
    return parser.parse_args([])


class Solver:
    """`Solver(config, logger).train()` as in the released code.

    `config` is the released main.py's argparse namespace; attributes it lacks
    (this package's own flags such as `out` or `backend`) take their defaults.
    """

    def __init__(self, config: argparse.Namespace, logger: logging.Logger | None = None) -> None:
        merged = vars(released_defaults())
        merged.update({k: v for k, v in vars(config).items() if v is not None or k not in merged})
        self.config = config_from_flags(argparse.Namespace(**merged))
        self.logger = logger or logging.getLogger("drcl_fast")
        self.data = load_dataset(self.config.datasets, self.config.data_root, self.config.data_path,
                                 path_option="--data_path FILE")   # the namespace holds the command line's flags
        self.n_view = self.data.num_modalities
        self.result: FitResult | None = None

    def train(self) -> np.ndarray | float:
        """Train, write the released files, print and log the result lines.

        Returns the K x K MAP@50 matrix as the released code does (or the
        training time in seconds with `running_time`). Under torchrun, ranks
        other than 0 train their share of the units and return zeros.
        """
        start = time.time()
        self.result = fit(self.data, self.config, progress=not self.config.quiet)
        if not distributed.is_main():   # under torchrun, rank 0 reports the run
            return np.zeros((self.n_view, self.n_view))
        if self.config.extra.get("running_time"):
            elapsed = time.time() - start
            print(f"runing_time: {elapsed}")
            return elapsed
        for tag, metrics in zip(("all", "50"), self.result.metrics):
            line = f"test resutls@{tag}:" + result_line(metrics)
            print(line)
            self.logger.info(line)
        return self.result.metrics[-1].matrix if self.result.metrics else np.zeros((self.n_view, self.n_view))
