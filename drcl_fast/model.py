"""The per-modality encoder F_k."""
from __future__ import annotations

import math

import torch
from torch import nn

from drcl_fast import ops


class Encoder(nn.Module):
    """Linear(d, H) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, D, no bias) -> unit rows."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
        )
        self.head = nn.Linear(hidden_dim, output_dim, bias=False)
        # The released code scales the last layer by the modality's *input* width.
        bound = 1.0 / math.sqrt(input_dim)
        nn.init.uniform_(self.head.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(self.body(x))
        return f / f.norm(dim=1, keepdim=True)

    def mixed_forward(self, x: torch.Tensor, permutation: torch.Tensor, gamma: float, prior: torch.Tensor,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(f~, f~ W): forward, then Mixup with `permutation` and projection by the prior W.

        The same values as ``ops.feature_mixup(self(x), ...)``; with backend "triton" the
        layers run as fused kernels (bias+ReLU in the GEMMs; norm, Mixup and projection in one pass).
        """
        first, second = self.body[0], self.body[2]
        h = ops.linear_relu(x, first.weight, first.bias, backend)
        h = ops.linear_relu(h, second.weight, second.bias, backend)
        return ops.mixup_project(h, self.head.weight, permutation, gamma, prior, backend)


def seeded_encoder(input_dim: int, hidden_dim: int, output_dim: int, seed: int,
                   device: torch.device | str = "cpu") -> Encoder:
    """An encoder whose initial weights depend on `seed` alone, not on global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Encoder(input_dim, hidden_dim, output_dim)
    return model.to(device)
