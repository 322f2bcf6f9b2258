"""Inputs for the Triton ops' self-check probes (``drcl_fast.runtime.selfcheck``), exact in every precision.

Each op's probe sits beside its kernels and runs its Triton entry and the float64
reference on one tiny input of odd sizes. Entries are multiples of 1/8, so every
product of two inputs is exact in TF32 and bfloat16 too: a GEMM of them is exact at
every precision; the ops that normalise rows are not, hence ``matmul_tolerance``.
"""
from __future__ import annotations

import torch

from drcl_fast.kernels.precision import get_precision


def dyadic(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Multiples of 1/8 in [-1, 1]."""
    return torch.randint(-8, 9, shape, generator=generator).float() / 8


def soft_targets(generator: torch.Generator, rows: int, classes: int) -> torch.Tensor:
    """Mixed one-hot rows, 0.75 / 0.25, as Mixup makes them."""
    labels = torch.randint(0, classes, (rows,), generator=generator)
    one_hot = torch.eye(classes)[labels]
    return 0.75 * one_hot + 0.25 * one_hot[torch.randperm(rows, generator=generator)]


def matmul_tolerance() -> float:
    """The probe's tolerance for an op that normalises rows, at the kernels' matrix-product precision."""
    return {"fp32": 1e-4, "tf32": 1e-2, "bf16": 6e-2}.get(get_precision(), 6e-2)


def leaves(device: torch.device, *tensors: torch.Tensor, double: bool = False) -> list[torch.Tensor]:
    """The tensors on `device` (in float64 with `double`), each a leaf that requires a gradient."""
    return [(t.double() if double else t).to(device).requires_grad_() for t in tensors]


# The retrieval probes' rankings. Rows of +-1 entries times a power of two: unit rows of +-1/2,
# so every cosine is a multiple of 1/4 in any precision and the rankings are exact, ties
# (broken by index) included.

def exact_rows(generator: torch.Generator, rows: int, dim: int = 4) -> torch.Tensor:
    """(rows, dim) float32 rows of +-1 entries, each row times a power of two in [1/4, 4]."""
    signs = torch.randint(0, 2, (rows, dim), generator=generator).float() * 2 - 1
    return signs * 2.0 ** torch.randint(-2, 3, (rows, 1), generator=generator).float()


def ranking_case(device: torch.device, seed: int, num_queries: int, gallery_size: int,
                 multilabel: bool) -> list[torch.Tensor]:
    """[query, query_labels, gallery, gallery_labels] on `device`: exact rows, and class codes in
    0..2 or (multilabel) 5-label 0/1 rows, some of them empty."""
    g = torch.Generator().manual_seed(seed)
    q, gallery = exact_rows(g, num_queries), exact_rows(g, gallery_size)
    if multilabel:   # some rows with no label: NaN APs, as multi-label queries with nothing relevant
        yq = (torch.rand(num_queries, 5, generator=g) < 0.3).float()
        yg = (torch.rand(gallery_size, 5, generator=g) < 0.3).float()
    else:
        yq, yg = torch.randint(0, 3, (num_queries,), generator=g), torch.randint(0, 3, (gallery_size,), generator=g)
    return [t.to(device) for t in (q, yq, gallery, yg)]
