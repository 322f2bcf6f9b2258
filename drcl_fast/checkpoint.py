"""Training state on disk, so that a killed run resumes to exactly the same result.

A run's checkpoint is `{out}/checkpoints/{dataset}[_view{k}].pt`: the finished SPL
units' results, the list of finished RSC units (each saved once, beside it, as
`...rsc{k}.pt`, since they are large and never change) and the unit in progress
(model, optimiser moments, RNG state, epoch, selection so far). Every file is
written to a temporary name and renamed, so a kill leaves the previous one whole,
and holds only tensors and plain Python values: `torch.load(weights_only=True)`
reads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import SPLITS, MultiModalData
from drcl_fast.errors import CheckpointError
from drcl_fast.outputs import atomic_write

log = logging.getLogger("drcl_fast")

FORMAT_VERSION = 1
AUTO_INTERVAL_S = 60.0  # checkpoint_every=None: after the first epoch that ends a minute past the last save
# Settings that change nothing in the result, so a resumed run may differ in them.
NOT_IN_FINGERPRINT = ("out", "quiet", "overwrite", "resume", "checkpoint_every", "extra",
                      "data_root", "data_path")

Snapshot = Callable[[], dict[str, Any]]


def fingerprint(cfg: DRCLConfig, data: MultiModalData) -> dict[str, Any]:
    """What a run's result depends on: its settings and a digest of its data."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    digest = hashlib.sha256()
    for split in SPLITS:
        for x, y in zip(data.split(split).features, data.split(split).labels):
            digest.update(np.ascontiguousarray(x).tobytes())
            digest.update(np.ascontiguousarray(y).tobytes())
    return {"settings": repr(sorted(settings.items())), "data": f"{data.name}:{digest.hexdigest()}"}


class Checkpointer:
    """Saves and restores one run's state; `every` epochs (None: about once a minute; 0: never)."""

    def __init__(self, out: str | Path, dataset: str, view_id: int, every: int | None,
                 identity: dict[str, Any]) -> None:
        stem = dataset if view_id < 0 else f"{dataset}_view{view_id}"
        self.path = Path(out) / "checkpoints" / f"{stem}.pt"
        self.every = every
        self.identity = identity
        self.last_saved: str = "none yet"
        self._last_time = time.monotonic()

    def unit_path(self, view: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rsc{view}.pt")

    @property
    def enabled(self) -> bool:
        return self.every != 0

    def fresh_state(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "identity": self.identity, "spl_done": [], "rsc_done": [],
                "unit": None}

    def load(self) -> dict[str, Any] | None:
        """The saved state of this run, or None when there is none."""
        if not self.path.is_file():
            return None
        state = self._read(self.path)
        if state.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{self.path} was written by another version of drcl_fast; "
                                  f"start over with --overwrite")
        if state["identity"] != self.identity:
            which = [k for k in ("settings", "data") if state["identity"][k] != self.identity[k]]
            raise CheckpointError(f"{self.path} belongs to a run with other {' and '.join(which)}; resume "
                                  f"with the same flags and data, or start over with --overwrite")
        state["rsc_results"] = {k: self._read(self.unit_path(k)) for k in state["rsc_done"]}
        return state

    def save(self, state: dict[str, Any], label: str) -> None:
        if not self.enabled:
            return
        kept = {k: v for k, v in state.items() if k != "rsc_results"}
        atomic_write(self.path, lambda tmp: torch.save(kept, tmp))
        self.last_saved = label
        self._last_time = time.monotonic()

    def save_unit(self, view: int, result_state: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write(self.unit_path(view), lambda tmp: torch.save(result_state, tmp))

    def due(self, epoch: int) -> bool:
        if self.every is None:
            return time.monotonic() - self._last_time >= AUTO_INTERVAL_S
        return self.every > 0 and epoch % self.every == 0

    def epoch_hook(self, state: dict[str, Any], phase: str, view: int) -> Callable[[int, Snapshot], None]:
        """What a training unit calls after each epoch: save the run with this unit's snapshot when due."""
        def on_epoch(epoch: int, snapshot: Snapshot) -> None:
            if self.enabled and self.due(epoch):
                state["unit"] = {"phase": phase, "view": view, **snapshot()}
                self.save(state, f"{phase} modality {view}, epoch {epoch}")
        return on_epoch

    def remove(self) -> None:
        for path in [self.path, *self.path.parent.glob(f"{self.path.stem}.rsc*.pt")]:
            path.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged file
            raise CheckpointError(f"cannot read checkpoint {path} ({err}); start over with --overwrite") from err
