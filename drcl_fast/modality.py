"""One modality's tensors on the training device, and the loops every unit shares."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from drcl_fast.data.container import MultiModalData

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


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Row indices of floor(n / batch_size) full batches of a fresh shuffle (last partial dropped)."""
    order = torch.randperm(n, generator=generator)
    for b in range(n // batch_size):
        yield order[b * batch_size:(b + 1) * batch_size]


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's embedding of every row of x, in chunks."""
    return torch.cat([model(x[i:i + ENCODE_CHUNK]) for i in range(0, x.shape[0], ENCODE_CHUNK)])
