"""L = W+ by the C x C Cholesky solve, its SVD fallback and its per-prior cache."""
from __future__ import annotations

import warnings

import pytest
import torch

from drcl_fast import ops
from drcl_fast.ops import pinv as pinv_module
from drcl_fast.ops.pinv import IllConditionedPriorWarning, prior_pinv
from drcl_fast.training.spl import initial_prior


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.setattr(pinv_module, "_pinvs", pinv_module.OneEntryCache())


def penrose_conditions_hold(w: torch.Tensor, l: torch.Tensor, atol: float) -> None:
    w, l = w.double(), l.double()
    torch.testing.assert_close(w @ l @ w, w, rtol=0, atol=atol)
    torch.testing.assert_close(l @ w @ l, l, rtol=0, atol=atol)
    torch.testing.assert_close((w @ l).t(), w @ l, rtol=0, atol=atol)
    torch.testing.assert_close((l @ w).t(), l @ w, rtol=0, atol=atol)


@pytest.mark.parametrize("d, c", [(2048, 10), (256, 200), (16, 2)])
def test_cholesky_solve_is_the_svd_pseudo_inverse(monkeypatch, d, c):
    w = torch.randn(d, c, generator=torch.Generator().manual_seed(c))
    want = torch.linalg.pinv(w.double())
    monkeypatch.setattr(torch.linalg, "pinv", None)     # the solve must not reach for an SVD
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = prior_pinv(w)
    assert got.shape == (c, d) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    penrose_conditions_hold(w, got, atol=1e-5)


def test_orthonormal_prior_inverts_to_its_transpose():
    w0 = initial_prior(256, 20, seed=3)
    torch.testing.assert_close(ops.prior_pinv(w0), w0.t(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["rank-deficient", "more classes than dimensions", "ill-conditioned"])
def test_bad_priors_fall_back_to_the_svd_with_a_warning(case):
    g = torch.Generator().manual_seed(0)
    if case == "rank-deficient":
        w = torch.randn(50, 6, generator=g, dtype=torch.float64)
        w[:, 5] = w[:, 0] + w[:, 1]
    elif case == "more classes than dimensions":
        w = torch.randn(8, 12, generator=g, dtype=torch.float64)
    else:   # cond(W) = 1e5: cond(W^T W) = 1e10, past what the normal equations may take
        u, _, v = torch.linalg.svd(torch.randn(50, 6, generator=g, dtype=torch.float64), full_matrices=False)
        w = u @ torch.diag(torch.logspace(0, -5, 6, dtype=torch.float64)) @ v
    with pytest.warns(IllConditionedPriorWarning, match="SVD"):
        got = prior_pinv(w)
    torch.testing.assert_close(got, torch.linalg.pinv(w))
    penrose_conditions_hold(w, got, atol=1e-9 * float(got.abs().max()))


def test_each_prior_is_inverted_once_and_a_changed_prior_again(monkeypatch):
    calls = []
    solve = pinv_module.cholesky_pinv
    monkeypatch.setattr(pinv_module, "cholesky_pinv", lambda w: calls.append(1) or solve(w))
    w = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))
    first = prior_pinv(w)
    assert prior_pinv(w.clone()) is first and len(calls) == 1
    w.mul_(2.0)                                          # same tensor, new values
    torch.testing.assert_close(prior_pinv(w), first / 2.0)
    assert len(calls) == 2
    assert prior_pinv(w.double()).dtype == torch.float64 and len(calls) == 3


def test_the_c_space_core_is_cached_per_pseudo_inverse():
    w = torch.randn(64, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pinv = prior_pinv(w)
    core = pinv_module.pinv_core(pinv)
    torch.testing.assert_close(core.gram, torch.linalg.inv(w.t() @ w))   # L L^T = (W^T W)^-1
    singular = torch.linalg.svdvals(w)
    assert core.condition == pytest.approx(float(singular[0] / singular[-1]) ** 2, rel=1e-9)
    assert pinv_module.pinv_core(pinv.clone()) is core
    assert pinv_module.pinv_core(pinv * 2) is not core
