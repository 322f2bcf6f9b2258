"""One modality's tensors on the training device, and the loops every unit shares."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from drcl_fast.data.container import MultiModalData
from drcl_fast.runtime import interrupt

# What a unit's epoch loop (SPL's, RSC's) calls. `on_epoch(epoch, snapshot)` runs after every epoch;
# `snapshot()` returns the state that the unit's `resume` takes to continue from that epoch bit for bit.
# Before each batch, a stop request (runtime.interrupt) calls `on_stop(snapshot)`, the state to continue
# from that batch, and raises `interrupt.Interrupted`.
EpochHook = Callable[[int, Callable[[], dict[str, Any]]], None]
StopHook = Callable[[Callable[[], dict[str, Any]]], None]

# Rows per encoder call when a whole split is encoded: bounds the H-wide activations.
ENCODE_CHUNK = 8192


@dataclass
class ModalityData:
    """Features and float targets of one modality, already on the device."""

    name: str
    train_x: torch.Tensor
    train_t: torch.Tensor
    valid_x: torch.Tensor
    valid_t: torch.Tensor
    test_x: torch.Tensor
    test_labels: np.ndarray  # as the dataset gives them, for the released output files

    @classmethod
    def from_dataset(cls, data: MultiModalData, k: int, device: torch.device) -> "ModalityData":
        """Modality k's tensors for training; train and valid rows with no label are left out.

        A row with no label has no target: its GCE term is -log 0 and Mixup of two such
        rows recasts an all-zero target, so it cannot train or select a model. Test rows
        are all kept: as gallery items they are never relevant, and MAP skips them as queries.
        """
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        train_x, train_y = _labelled_rows(data, "train", k)
        valid_x, valid_y = _labelled_rows(data, "valid", k)
        return cls(
            name=data.modalities[k],
            train_x=to(train_x), train_t=to(data.targets(train_y)),
            valid_x=to(valid_x), valid_t=to(data.targets(valid_y)),
            test_x=to(data.test.features[k]), test_labels=data.test.labels[k],
        )

    @property
    def input_dim(self) -> int:
        return int(self.train_x.shape[1])


def _labelled_rows(data: MultiModalData, split: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Modality k's features and labels in `split`, without its unlabelled rows (no copy if there are none)."""
    x, y = data.split(split).features[k], data.split(split).labels[k]
    unlabelled = data.unlabelled_rows(split, k)
    if not unlabelled.any():
        return x, y
    return x[~unlabelled], y[~unlabelled]


SYNC_CHECK_ENV = "DRCL_FAST_SYNC_CHECK"


@contextlib.contextmanager
def batch_loop(device: torch.device) -> Iterator[None]:
    """Around an epoch's batches. With DRCL_FAST_SYNC_CHECK=1 on a GPU, any host synchronisation
    inside raises (``torch.cuda.set_sync_debug_mode("error")``): the loop is meant to make none,
    the epoch's one transfer comes after it. Otherwise, and on the CPU, it does nothing."""
    if device.type != "cuda" or os.environ.get(SYNC_CHECK_ENV) != "1":
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def run_batches(first: int, count: int, device: torch.device, one_batch: Callable[[int], None]) -> int | None:
    """one_batch(b) for b = first .. count - 1 inside ``batch_loop``; before each, a stop request
    (runtime.interrupt) ends the loop: the batch it came at, or None when every batch ran."""
    with batch_loop(device):
        for b in range(first, count):
            if interrupt.requested():
                return b
            one_batch(b)
    return None


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` (on the host) on `device`; to a GPU through pinned memory without blocking the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def epoch_draws(n: int, batch_size: int, generator: torch.Generator, device: torch.device,
                mixup: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An epoch's random draws, made at once: (batches, permutations) on `device`.

    `batches`: floor(n / batch_size) x batch_size row indices of a fresh shuffle (the last
    partial batch dropped); with `mixup`, `permutations`: one permutation of each batch's
    positions, drawn after the shuffle in batch order, as a loop drawing per batch would.
    The generator stays on the host (the same draws on every device) and the draws reach
    the device in one transfer per epoch, which a GPU does not wait for.
    """
    order = torch.randperm(n, generator=generator)
    count = n // batch_size
    batches = order[:count * batch_size].view(count, batch_size)
    permutations = None
    if mixup:
        permutations = torch.empty(count, batch_size, dtype=torch.long)
        for b in range(count):
            permutations[b] = torch.randperm(batch_size, generator=generator)
        permutations = to_device(permutations, device)
    return to_device(batches, device), permutations


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's embedding of every row of x, in chunks."""
    return torch.cat([model(x[i:i + ENCODE_CHUNK]) for i in range(0, x.shape[0], ENCODE_CHUNK)])
