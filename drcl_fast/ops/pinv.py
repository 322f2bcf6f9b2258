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

import torch

# The solve's relative error is about cond(W^T W) * 1e-16 in float64; at 1e8 it is
# still below float32's rounding, which is the precision L is used in.
MAX_GRAM_CONDITION = 1e8

_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (prior as given, its pinv)


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
    """L = W+ (C x D) in the prior's dtype; cached, so each prior is inverted once."""
    global _cache
    if (_cache is not None and _cache[0].shape == prior.shape and _cache[0].dtype == prior.dtype
            and _cache[0].device == prior.device and torch.equal(_cache[0], prior)):
        return _cache[1]
    pinv = cholesky_pinv(prior)
    if pinv is None:
        warnings.warn(f"the prior W ({prior.shape[0]} x {prior.shape[1]}) is rank-deficient or "
                      f"ill-conditioned (cond(W^T W) > {MAX_GRAM_CONDITION:.0e}); computing W+ by SVD",
                      IllConditionedPriorWarning, stacklevel=2)
        pinv = torch.linalg.pinv(prior.double())
    pinv = pinv.to(prior.dtype)
    _cache = (prior.detach().clone(), pinv)
    return pinv
