"""The flags of `drcl-fast sweep` and `drcl-fast ablate`: those of `train`, and the study's own.

Only argparse here, so that building the command line imports no training code.
"""
from __future__ import annotations

import argparse

from drcl_fast.flags import add_train_flags


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """Train's flags, with --alpha and --beta taking lists (the grid) and --prior also `each`."""
    add_train_flags(parser)
    # The sweep's --alpha, --beta and --prior replace train's: argparse drops those on a conflict.
    parser.conflict_handler = "resolve"
    grid = parser.add_argument_group("sweep (every other flag as for train; every point is that train run)")
    grid.add_argument("--alpha", type=float, nargs="+", default=None, metavar="A",
                      help="J_D weights of the grid, e.g. 0 0.01 0.1 1 (default: train's, 0.1)")
    grid.add_argument("--beta", type=float, nargs="+", default=None, metavar="B",
                      help="J_MSE weights of the grid, e.g. 0 0.01 0.1 1 (default: train's, 0.1)")
    grid.add_argument("--prior", default=None,
                      help="spl (default: SPL trains once, every grid point reuses its prior); each: the "
                           "prior learned on each modality and W0 compared, at one alpha and beta; "
                           "w0, file or a prior file: every grid point uses it")


def add_ablate_flags(parser: argparse.ArgumentParser) -> None:
    """Train's flags (the full DRCL run) and --seeds."""
    add_train_flags(parser)
    group = parser.add_argument_group("ablate (every other flag as for train; the full variant is that train run)")
    group.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                       help="seeds to run every variant with; the table gives mean ± sample standard "
                            "deviation over them (default: --seed, 1)")
