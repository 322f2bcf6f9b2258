"""Files a run writes, named as the released code names them, written atomically.

Layout under the output directory `out`:
  PriorW/W_{D}X{C}{dataset}.mat      the chosen prior (key W, D x C)
  PriorW/W_{D}X{C}{dataset}{k}.mat   SPL's W_k of modality k
  features/{dataset}_{k}.mat         test_fea, test_lab, test_pred of modality k
  metrics.json                       MAP@all and MAP@50, every direction and the mean
  lr_search.json                     with --lr auto: each searched modality's candidates and choice
  model/                             the trained model (drcl_fast/serving/model_folder.py, written there)
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.io as sio
import torch

from drcl_fast.data.generic import ArrayFile, label_rows
from drcl_fast.errors import DataError, OutputExistsError


def prior_path(out: str | Path, dataset: str, output_dim: int, num_classes: int, k: int | None = None) -> Path:
    suffix = "" if k is None else str(k)
    return Path(out) / "PriorW" / f"W_{output_dim}X{num_classes}{dataset}{suffix}.mat"


def features_path(out: str | Path, dataset: str, k: int) -> Path:
    return Path(out) / "features" / f"{dataset}_{k}.mat"


def metrics_path(out: str | Path) -> Path:
    return Path(out) / "metrics.json"


def lr_search_path(out: str | Path) -> Path:
    return Path(out) / "lr_search.json"


def refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    """Stop before any work if a run would replace a user's files."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            "these output files exist and would be overwritten: " + ", ".join(existing)
            + "; pass --overwrite (overwrite=True) to replace them, or choose another --out directory")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()   # read once: os.umask can only be read by setting it


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes it private; an output file gets the usual mode
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The free text of a MAT 5 file's 116-byte header. scipy writes the time there, which would
# make two runs with the same result differ in their bytes: this one has none.
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by drcl_fast"


def save_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    sio.savemat(buffer, arrays)
    content = bytearray(buffer.getvalue())
    content[:116] = MAT_HEADER_TEXT.ljust(116)
    atomic_write(path, lambda tmp: tmp.write_bytes(bytes(content)))


def save_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))


def load_prior_file(path: str | Path, output_dim: int, num_classes: int) -> np.ndarray:
    """A D x C prior from a .mat (key W), .npy or .pt file, with a clear error if it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prior file {path} does not exist; learn one with --wselect True "
                        f"(SPL), or pass --prior w0 to use the random orthogonal W0")
    if path.suffix in (".npy", ".pt"):
        try:
            prior = (np.load(path, allow_pickle=False) if path.suffix == ".npy"
                     else torch.load(path, map_location="cpu", weights_only=True).numpy())
        except Exception as err:  # numpy and torch raise many types for a damaged file
            raise DataError(f"cannot read prior file {path}: {err}") from err
    else:
        with ArrayFile(path) as f:
            prior = f["W"]
    # C order, as SPL hands W to RSC in memory (scipy reads .mat matrices in Fortran order, and
    # products with W in that layout round differently): a run with --prior W.mat trains as the
    # SPL run that wrote it.
    prior = np.ascontiguousarray(prior, dtype=np.float32)
    if prior.shape != (output_dim, num_classes):
        raise DataError(f"prior file {path} holds a {' x '.join(map(str, prior.shape))} matrix; this run "
                        f"needs D x C = {output_dim} x {num_classes} (--output_shape and the dataset's classes)")
    if not np.isfinite(prior).all():
        raise DataError(f"prior file {path} holds NaN or Inf")
    return prior


def load_features(out: str | Path, dataset: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """test_fea and test_lab of a released-layout features file; label vectors come back 1-D."""
    path = features_path(out, dataset, k)
    if not path.is_file():
        raise DataError(f"{path} does not exist: train modality {k} first (--view_id {k})")
    with ArrayFile(path) as f:
        return f["test_fea"], label_rows(f["test_lab"])
