"""The released main.py's flags (same names, meanings, defaults) plus this package's own.

Shared by the CLI and the drop-in Solver, which receives the parsed namespace.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from drcl_fast.config import AUTO, DRCLConfig
from drcl_fast.errors import ConfigError
from drcl_fast.runtime import backends, precision

# Released flags kept for compatibility that change nothing here.
INERT_FLAGS = ("gpu_id", "just_val", "running_time")

# The released main.py's --wselect default at the authors' current head (it was False
# before): a bare `main.py --datasets wiki` learns the prior with SPL.
RELEASED_WSELECT = True


def str2bool(text: str | bool) -> bool:
    """Parse a boolean the way a user means it (the released `type=bool` read "False" as True)."""
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, 1/0, yes/no), got {text!r}")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add --name and, where it has underscores, its dashed alias --na-me."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    if name != name.lower():
        spellings.append(f"--{name.lower().replace('_', '-')}")
    parser.add_argument(*dict.fromkeys(spellings), dest=name, **kwargs)


def _number_or_auto(convert: type, what: str) -> Callable[[str], float | int | str]:
    """An argparse type: `convert(text)`, or 'auto' as it is."""
    def parse(text: str) -> float | int | str:
        if text == AUTO:
            return text
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither {what} nor '{AUTO}'") from None
    return parse


rate = _number_or_auto(float, "a number")                 # a learning rate
units_setting = _number_or_auto(int, "a whole number")    # units trained at once


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    boolean = dict(type=str2bool, nargs="?", const=True, metavar="BOOL")
    g = parser.add_argument_group("released main.py flags (None: the dataset's preset)")
    _flag(g, "datasets", default="wiki", help="wiki, xmedia, xmedianet, nus, INRIA-Websearch, mfeat (default: wiki)")
    _flag(g, "lr", type=rate, nargs="+", default=None,
          help="RSC learning rate: one value for every modality, or one per modality; 'auto' searches it "
               "on the training and validation data (e.g. 'auto', or '1e-3 auto'). Default: the dataset's "
               "published rates; the released list for the other released names; 'auto' for other data")
    _flag(g, "lr_SPL", type=float, default=None, help="SPL learning rate (5e-4)")
    _flag(g, "wselect", default=None, help="learn the prior with SPL (True, the released default) or read "
          "PriorW/W_{D}X{C}{dataset}.mat (False)", **boolean)
    _flag(g, "batch_size", type=int, default=None, help="batch size (1024)")
    _flag(g, "output_shape", type=int, default=None, help="embedding width D (2048; -1: number of classes)")
    _flag(g, "alpha", type=float, default=None, help="J_D weight (0.1)")
    _flag(g, "beta", type=float, default=None, help="J_MSE weight (0.1)")
    _flag(g, "eta", type=float, default=None, help="J_L weight (1)")
    _flag(g, "gamma", type=float, default=None, help="Mixup coefficient (0.9; 1 disables FA)")
    _flag(g, "view_id", type=int, default=-1, help="train only this modality (-1: all)")
    _flag(g, "gpu_id", type=int, default=0, help="CUDA device index used by --device auto")
    _flag(g, "sample_interval", type=int, default=None, help="epochs between model-selection checks (1)")
    _flag(g, "epochs", type=int, default=None, help="epochs of SPL and of RSC (dataset preset)")
    _flag(g, "seed", type=int, default=None, help="random seed (1)")
    _flag(g, "just_val", default=False, help="accepted for compatibility; no effect", **boolean)
    _flag(g, "running_time", default=False, help="print the training time and skip evaluation", **boolean)

    n = parser.add_argument_group("drcl_fast flags")
    _flag(n, "data_root", default="datasets", help="folder of the released dataset files (default: datasets)")
    _flag(n, "data_path", default=None, help="a generic .npz/.h5/.mat container to train on instead")
    _flag(n, "out", default=".", help="folder for PriorW/, features/, metrics.json and logging/ (default: .)")
    _flag(n, "device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    _flag(n, "backend", **backends.flag_options())
    _flag(n, "precision", **precision.flag_options())
    _flag(n, "hidden_shape", type=int, default=None, help="encoder hidden width H (4096)")
    _flag(n, "spl_epochs", type=int, default=None, help="SPL epochs (default: --epochs)")
    _flag(n, "prior", default=None, help="spl, file, w0 (the without-SPL ablation) or a prior file; overrides --wselect")
    _flag(n, "released_prior_slip", default=False, help="keep SPL's final-epoch W_k as the released code does",
          **boolean)
    _flag(n, "overwrite", action="store_true", help="replace existing output files")
    _flag(n, "checkpoint_every", type=int, default=None,
          help="epochs between checkpoints in --out/checkpoints (default: about once a minute; 0: none)")
    _flag(n, "resume", action="store_true", help="continue an interrupted run from its checkpoint (same flags)")
    _flag(n, "concurrent_units", type=units_setting, default=None,
          help="modalities trained at once in this process: on a GPU one CUDA stream each; on the CPU one "
               "thread each, sharing the intra-op threads out (default: auto, as many as the CPU's intra-op "
               "threads, one after another on a GPU; 1: one after another)")
    _flag(n, "lr_criterion", choices=("val_loss", "val_map"), default=None,
          help="what --lr auto ranks rates by: the validation loss J (default) or the validation rows' "
               "MAP against the training rows (docs/lr_search.md)")
    _flag(n, "deterministic", action="store_true", help="deterministic GPU kernels (slower; CPU runs always are)")
    _flag(n, "quiet", action="store_true", help="no progress bars or log lines on the console")


def config_from_flags(ns: argparse.Namespace) -> DRCLConfig:
    """A DRCLConfig from parsed flags (or the released code's config namespace)."""
    flags = vars(ns)
    dataset = flags["datasets"]
    fields = set(DRCLConfig.__dataclass_fields__)
    given = {k: v for k, v in flags.items() if k in fields and v is not None}
    given["prior"] = _prior_choice(flags)
    if flags.get("device", "auto") == "auto" and flags.get("gpu_id"):
        import torch
        if torch.cuda.is_available():
            given["device"] = f"cuda:{flags['gpu_id']}"
    given["extra"] = {k: flags[k] for k in INERT_FLAGS if k in flags}
    if flags.get("resume") and flags.get("overwrite"):
        raise ConfigError("--resume continues a run and --overwrite starts it over; give one of them")
    given.pop("datasets")
    if isinstance(given.get("lr"), list) and len(given["lr"]) == 1:   # one value (or 'auto') for every modality
        given["lr"] = given["lr"][0]
    return DRCLConfig.preset(dataset, **given)


def _prior_choice(flags: dict[str, Any]) -> str:
    wselect = flags.get("wselect")
    if flags.get("prior") is not None:
        if wselect is not None and wselect != (flags["prior"] == "spl"):
            raise ConfigError(f"--prior {flags['prior']} contradicts --wselect {wselect}: --wselect True "
                              f"means --prior spl, False means --prior file; give one of them")
        return flags["prior"]
    return "spl" if (RELEASED_WSELECT if wselect is None else wselect) else "file"
