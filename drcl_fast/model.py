"""The per-modality encoder F_k."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from drcl_fast import ops


def head_bound(input_dim: int) -> float:
    """The released code scales the last layer by the modality's *input* width."""
    return 1.0 / math.sqrt(input_dim)


class Encoder(nn.Module):
    """Linear(d, H) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, D, no bias) -> unit rows.

    `compute_dtype` is the dtype of its products' operands (drcl_fast.runtime.precision): bfloat16 casts the
    input, the weights and the biases for the three products, as ``torch.autocast`` would, and the
    last product's output back to the weights' dtype before the rows are normalised; None casts nothing.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int,
                 compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.body = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
        )
        self.head = nn.Linear(hidden_dim, output_dim, bias=False)
        nn.init.uniform_(self.head.weight, -head_bound(input_dim), head_bound(input_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.operand(x)
        for layer in (self.body[0], self.body[2]):
            h = torch.relu(F.linear(h, self.operand(layer.weight), self.operand(layer.bias)))
        f = F.linear(h, self.operand(self.head.weight)).to(self.head.weight.dtype)
        return f / f.norm(dim=1, keepdim=True)

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """`t` as the products take it: cast to compute_dtype (the same tensor where it is that already)."""
        return t if self.compute_dtype is None else t.to(self.compute_dtype)

    def mixed_forward(self, x: torch.Tensor, permutation: torch.Tensor, gamma: float, prior: torch.Tensor,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(f~, f~ W): forward, then Mixup with `permutation` and projection by the prior W.

        The same values as ``ops.feature_mixup(self(x), ...)``; with backend "triton" the
        layers run as fused kernels (bias+ReLU in the GEMMs; norm, Mixup and projection in one pass),
        which take float32 operands and multiply at the kernels' precision (the run sets it).
        """
        cast = self.operand if ops.step_ops_run_reference(backend, x.device) else (lambda t: t)
        first, second = self.body[0], self.body[2]
        h = ops.linear_relu(cast(x), cast(first.weight), cast(first.bias), backend)
        h = ops.linear_relu(h, cast(second.weight), cast(second.bias), backend)
        return ops.mixup_project(h, cast(self.head.weight), permutation, gamma, prior, backend)


def seeded_encoder(input_dim: int, hidden_dim: int, output_dim: int, seed: int,
                   device: torch.device | str = "cpu", compute_dtype: torch.dtype | None = None) -> Encoder:
    """An encoder whose initial weights depend on `seed` alone, not on global RNG state.

    The weights are those of ``torch.manual_seed(seed); Encoder(...)`` (nn.Linear's
    initialisation layer by layer, then the head's), drawn from a generator of the
    call's own, so that units initialising in threads at once do not share one.
    """
    with torch.device("meta"):
        model = Encoder(input_dim, hidden_dim, output_dim, compute_dtype)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.body[0], model.body[2], model.head):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        nn.init.uniform_(model.head.weight, -head_bound(input_dim), head_bound(input_dim), generator=generator)
    return model.to(device)


def encoder_from_state(state: dict[str, torch.Tensor], device: torch.device | str = "cpu",
                       compute_dtype: torch.dtype | None = None) -> Encoder:
    """An encoder holding a copy of `state` (a saved encoder's weights), its sizes read from their shapes."""
    hidden_dim, input_dim = state["body.0.weight"].shape
    with torch.device("meta"):
        model = Encoder(input_dim, hidden_dim, state["head.weight"].shape[0], compute_dtype)
    model.to_empty(device=device)
    model.load_state_dict(state)
    return model
