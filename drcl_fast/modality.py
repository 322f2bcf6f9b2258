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
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        return cls(
            name=data.modalities[k],
            train_x=to(data.train.features[k]), train_t=to(data.targets(data.train.labels[k])),
            valid_x=to(data.valid.features[k]), valid_t=to(data.targets(data.valid.labels[k])),
            test_x=to(data.test.features[k]), test_labels=data.test.labels[k],
        )

    @property
    def input_dim(self) -> int:
        return int(self.train_x.shape[1])


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Row indices of floor(n / batch_size) full batches of a fresh shuffle (last partial dropped)."""
    order = torch.randperm(n, generator=generator)
    for b in range(n // batch_size):
        yield order[b * batch_size:(b + 1) * batch_size]


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's embedding of every row of x, in chunks."""
    return torch.cat([model(x[i:i + ENCODE_CHUNK]) for i in range(0, x.shape[0], ENCODE_CHUNK)])
