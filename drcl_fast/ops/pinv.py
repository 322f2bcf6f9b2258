"""L = W+ of the prior by a C x C Cholesky solve, with an SVD fallback and a per-prior cache.

For a full-column-rank W (D x C), W+ = (W^T W)^-1 W^T: one D x C x C product and
a Cholesky solve of the C x C normal equations, instead of an SVD of the D x C
matrix. Forming W^T W squares W's condition number, so the solve is used only
when cond(W^T W) leaves float64 more than float32's precision; otherwise (or
when W is rank-deficient, e.g. C > D) the SVD pseudo-inverse is taken, with a
warning, since such a prior is itself a sign that something went wrong upstream.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch

# The solve's relative error is about cond(W^T W) * 1e-16 in float64; at 1e8 it is
# still below float32's rounding, which is the precision L is used in.
MAX_GRAM_CONDITION = 1e8


class OneEntryCache:
    """The value computed for the last key, reused while an equal key comes back.

    Keys are compared by value (torch.equal): a prior changed in place is a new prior.
    """

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.value = None

    def get(self, key: torch.Tensor, compute: Callable[[torch.Tensor], object]):
        same = (self.key is not None and self.key.shape == key.shape and self.key.dtype == key.dtype
                and self.key.device == key.device and torch.equal(self.key, key))
        if not same:
            self.value, self.key = compute(key), key.detach().clone()
        return self.value


_pinvs = OneEntryCache()
_cores = OneEntryCache()


class IllConditionedPriorWarning(RuntimeWarning):
    """The prior's normal equations are too ill-conditioned for the Cholesky solve."""


def cholesky_pinv(prior: torch.Tensor) -> torch.Tensor | None:
    """(W^T W)^-1 W^T in float64, or None when W^T W is singular or ill-conditioned."""
    w = prior.double()
    gram = w.t() @ w
    eigenvalues = torch.linalg.eigvalsh(gram)   # C x C: negligible beside the D x C x C product
    if not eigenvalues[0] > eigenvalues[-1] / MAX_GRAM_CONDITION:
        return None
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return None
    return torch.cholesky_solve(w.t(), factor)


def prior_pinv(prior: torch.Tensor) -> torch.Tensor:
    """L = W+, the Moore-Penrose pseudo-inverse of the prior W, as the RSC loss takes it.

    A C x C Cholesky solve in float64 for a well-conditioned W, else an SVD (see the module's
    docstring). The result is cached: a prior equal to the last one is not inverted again.

    Args:
        prior: (D, C) the prior W.

    Returns:
        (C, D) L = W+, contiguous, in the prior's dtype and on its device.

    Warns:
        IllConditionedPriorWarning: W is rank-deficient (e.g. C > D) or cond(W^T W) exceeds
            MAX_GRAM_CONDITION, so the SVD is taken.

    Example:
        >>> import torch
        >>> from drcl_fast import ops
        >>> prior = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))   # W, D x C
        >>> pinv = ops.prior_pinv(prior)
        >>> pinv.shape, pinv.dtype
        (torch.Size([3, 8]), torch.float32)
        >>> torch.allclose(pinv @ prior, torch.eye(3), atol=1e-5)
        True
    """
    return _pinvs.get(prior, _invert)


class Core(NamedTuple):
    """The C-space core of the loss, K = L L^T (= (W^T W)+ for L = W+), in float64."""

    gram: torch.Tensor
    condition: float   # of K (= cond(W)^2); inf where K is singular


def pinv_core(pinv: torch.Tensor) -> Core:
    """K = L L^T and its condition number; cached like L, so formed once per prior."""
    return _cores.get(pinv, _core)


def _core(pinv: torch.Tensor) -> Core:
    wide = pinv.double()
    gram = wide @ wide.t()
    eigenvalues = torch.linalg.eigvalsh(gram)
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    return Core(gram, largest / smallest if smallest > 0 else float("inf"))


def _invert(prior: torch.Tensor) -> torch.Tensor:
    pinv = cholesky_pinv(prior)
    if pinv is None:
        warnings.warn(f"the prior W ({prior.shape[0]} x {prior.shape[1]}) is rank-deficient or "
                      f"ill-conditioned (cond(W^T W) > {MAX_GRAM_CONDITION:.0e}); computing W+ by SVD",
                      IllConditionedPriorWarning, stacklevel=4)
        pinv = torch.linalg.pinv(prior.double())
    return pinv.to(prior.dtype).contiguous()   # the solve returns column-major; rows of L are gathered
