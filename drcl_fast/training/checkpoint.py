"""Training state on disk, so that a killed run resumes to exactly the same result.

Each unit of a run (SPL or RSC on one modality) has its own checkpoint,
`{out}/checkpoints/{dataset}[_view{k}].{phase}{k}.pt`: while it trains, its
progress (model, optimiser moments, RNG state, epoch, selection so far); once
done, its result. Units that train at once (threads, CUDA streams, ranks) never
share a file, and a rank finds its units' files again on resume. Every file
carries the run's identity, is written to a temporary name and renamed, so a
kill leaves the previous one whole, and holds only tensors and plain Python
values: `torch.load(weights_only=True)` reads it.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import SPLITS, MultiModalData
from drcl_fast.errors import CheckpointError
from drcl_fast.outputs import atomic_write

FORMAT_VERSION = 2   # 1: one file for the whole run
AUTO_INTERVAL_S = 60.0  # checkpoint_every=None: after the first epoch that ends a minute past the unit's last save
# Settings that change nothing in the result, so a resumed run may differ in them.
NOT_IN_FINGERPRINT = ("out", "quiet", "overwrite", "resume", "checkpoint_every", "extra",
                      "data_root", "data_path", "concurrent_units")

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


def _changed_settings(saved: str, now: str) -> str:
    """" (precision: bf16 there, fp32 here)": the settings that differ between two fingerprints, where both read."""
    try:
        before, after = dict(ast.literal_eval(saved)), dict(ast.literal_eval(now))
    except (ValueError, SyntaxError, TypeError):
        return ""
    changes = [f"{k}: {before.get(k)!r} there, {after.get(k)!r} here"
               for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    return f" ({'; '.join(changes)})" if changes else ""


class Checkpointer:
    """Saves and restores the units of one run; `every` epochs (None: about once a minute; 0: never)."""

    def __init__(self, out: str | Path, dataset: str, view_id: int, every: int | None,
                 identity: dict[str, Any]) -> None:
        self.stem = dataset if view_id < 0 else f"{dataset}_view{view_id}"
        self.folder = Path(out) / "checkpoints"
        self.every = every
        self.identity = identity
        self._last_saved: dict[tuple[str, int], tuple[float, str]] = {}
        self._lock = threading.Lock()   # units may train in threads
        self._created = time.monotonic()

    def path(self, phase: str, view: int) -> Path:
        return self.folder / f"{self.stem}.{phase}{view}.pt"

    @property
    def enabled(self) -> bool:
        return self.every != 0

    def saved_paths(self) -> list[Path]:
        """This run's unit checkpoints on disk."""
        return self._files(f"{self.stem}.*.pt")

    def _files(self, pattern: str) -> list[Path]:
        """The folder's files matching `pattern`; none once the folder is gone (under torchrun, the rank
        that finished last removes it, possibly while another lists it)."""
        try:
            return sorted(self.folder.glob(pattern))
        except FileNotFoundError:
            return []

    def load(self, phase: str, view: int) -> dict[str, Any] | None:
        """The unit's saved record ({"done": bool, "progress": ..., "result": ...}), or None."""
        path = self.path(phase, view)
        if not path.is_file():
            return None
        record = self._read(path)
        if record.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by another version of drcl_fast; "
                                  f"start over with --overwrite")
        if record["identity"] != self.identity:
            which = [k for k in ("settings", "data") if record["identity"][k] != self.identity[k]]
            changed = _changed_settings(record["identity"]["settings"], self.identity["settings"])
            raise CheckpointError(f"{path} belongs to a run with other {' and '.join(which)}{changed}; resume "
                                  f"with the same flags and data, or start over with --overwrite")
        return record

    def save_done(self, phase: str, view: int, result_state: dict[str, Any]) -> None:
        """The unit's result: a resumed run restores it instead of training the unit again."""
        self._save(phase, view, {"done": True, "progress": None, "result": result_state}, "done")

    def save_progress(self, phase: str, view: int, progress: dict[str, Any], label: str) -> None:
        """The unit's state now, whether or not an epoch's save is due (a learning-rate search's round)."""
        self._save(phase, view, {"done": False, "progress": progress, "result": None}, label)

    def last_saved(self, phase: str, view: int) -> str:
        return self._last_saved.get((phase, view), (0.0, "none yet"))[1]

    def due(self, phase: str, view: int, epoch: int) -> bool:
        if self.every is None:
            since = self._last_saved.get((phase, view), (self._created, ""))[0]
            return time.monotonic() - since >= AUTO_INTERVAL_S
        return self.every > 0 and epoch % self.every == 0

    def epoch_hook(self, phase: str, view: int, extra: dict[str, Any] | None = None
                   ) -> Callable[[int, Snapshot], None]:
        """What a training unit calls after each epoch: save its snapshot (and `extra`) when due."""
        def on_epoch(epoch: int, snapshot: Snapshot) -> None:
            if self.enabled and self.due(phase, view, epoch):
                self.save_progress(phase, view, {**snapshot(), **(extra or {})}, f"epoch {epoch}")
        return on_epoch

    def stop_hook(self, phase: str, view: int, extra: dict[str, Any] | None = None
                  ) -> Callable[[Snapshot], None]:
        """What a training unit calls when it stops on request (`interrupt`): save its snapshot now,
        part-way through an epoch, whether or not a save is due (nothing with checkpoints off)."""
        def on_stop(snapshot: Snapshot) -> None:
            if self.enabled:
                state = {**snapshot(), **(extra or {})}
                self.save_progress(phase, view, state, f"stopped in epoch {state['epoch'] + 1} "
                                                       f"before batch {state.get('batch', 0) + 1}")
        return on_stop

    def identity_on_disk(self) -> dict[str, Any] | None:
        """The identity of the checkpoints on disk (the first one's), or None if it cannot be read."""
        for path in self.saved_paths():
            try:   # mmap: the tensors are not read
                record = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # torch raises many types for a damaged file
                continue
            if isinstance(record, dict) and record.get("version") == FORMAT_VERSION:
                return record.get("identity")
        return None

    def remove(self) -> None:
        # With the temporary files of saves that a second Ctrl-C (os._exit) or a kill cut short.
        for path in [*self.saved_paths(), *self._files(f".{self.stem}.*.tmp")]:
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()   # and the folder, once empty (it stays while it holds other runs' files)
        except OSError:
            pass

    def _save(self, phase: str, view: int, record: dict[str, Any], label: str) -> None:
        if not self.enabled:
            return
        record = {"version": FORMAT_VERSION, "identity": self.identity, "phase": phase, "view": view, **record}
        atomic_write(self.path(phase, view), lambda tmp: torch.save(record, tmp))
        with self._lock:
            self._last_saved[(phase, view)] = (time.monotonic(), label)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged file
            raise CheckpointError(f"cannot read checkpoint {path} ({err}); start over with --overwrite") from err
