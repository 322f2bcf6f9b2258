"""MRR's recast targets r = y~ L, as a gather-and-mix of L's rows where the labels are sparse.

A mixed one-hot row has two nonzeros (gamma and 1 - gamma), a mixed multi-hot row
a few: ``r_i = sum_k w_ik L[c_ik]`` reads those rows of L instead of multiplying
by all C of them. Where rows hold more than C / DENSE_BELOW nonzeros the dense
product is cheaper and is used. The number of nonzeros is read on the host, so
this is the CPU's recast; the Triton loss forms r in registers instead.
"""
from __future__ import annotations

import torch

# Measured on a 2-core CPU (docs/kernels.md): at C = 10 the dense product beats two gathers,
# at C = 200 two gathers are about five times faster than the product.
DENSE_BELOW = 8


def recast(targets: torch.Tensor, pinv: torch.Tensor) -> torch.Tensor:
    """r = targets @ pinv (B x D), as a new tensor."""
    nonzeros = int((targets != 0).sum(dim=1).max()) if targets.numel() else 0
    if nonzeros == 0 or nonzeros * DENSE_BELOW > targets.shape[1]:
        return targets @ pinv
    weights, classes = targets.topk(nonzeros, dim=1)
    out = pinv.index_select(0, classes[:, 0]).mul_(weights[:, :1])
    for k in range(1, nonzeros):
        out.addcmul_(pinv.index_select(0, classes[:, k]), weights[:, k:k + 1])
    return out
