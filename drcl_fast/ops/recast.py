"""MRR's recast targets r = y~ L, as a gather-and-mix of L's rows where the labels are sparse.

A mixed one-hot row has two nonzeros (gamma and 1 - gamma), a mixed multi-hot row
a few: ``r_i = sum_k w_ik L[c_ik]``, read from those rows of L instead of a product
with all C of them: a sparse (CSR) times dense product does exactly that sum in one
pass, with no B x k x D temporary. The nonzeros are counted on the host, so this is
the CPU's recast; the Triton loss forms r in registers instead.
"""
from __future__ import annotations

import warnings

import torch

# Sparse when at most 1 / DENSE_ABOVE of a row is nonzero: the CSR product's cost follows the
# nonzeros, the dense one's C (docs/kernels.md has the timings); at C = 3, two of three are nonzero.
DENSE_ABOVE = 2


def sparse_rows(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(classes, weights), B x k each, holding every row's nonzeros (padded with zeros).

    None when more than 1 / DENSE_ABOVE of some row is nonzero: then a dense product is cheaper.
    """
    nonzeros = int((targets != 0).sum(dim=1).max()) if targets.numel() else 0
    if nonzeros == 0 or nonzeros * DENSE_ABOVE > targets.shape[1]:
        return None
    weights, classes = targets.topk(nonzeros, dim=1)
    return classes, weights


def scaled_residual(targets: torch.Tensor, pinv: torch.Tensor, features: torch.Tensor, scale: float,
                    sparse: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """scale * (targets @ pinv - features), into `out` where given; `sparse` is ``sparse_rows(targets)``.

    Sparse rows go in as a CSR matrix of their nonzeros (padding included as explicit zeros):
    ``addmm`` then reads those rows of L and writes each output row once, with no temporary.
    """
    if sparse is not None:
        classes, weights = sparse
        b, k = classes.shape
        crow = torch.arange(0, b * k + 1, k, device=classes.device)
        with warnings.catch_warnings():   # torch's note that CSR support is in beta, once a process
            warnings.simplefilter("ignore", UserWarning)
            targets = torch.sparse_csr_tensor(crow, classes.reshape(-1), weights.reshape(-1), targets.shape,
                                              check_invariants=False)
    return torch.addmm(features, targets, pinv, beta=-scale, alpha=scale, out=out)
