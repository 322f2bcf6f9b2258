"""Each loss term against a direct transcription of its formula (docs/design.md section 1)."""
from __future__ import annotations

import math

import pytest
import torch

from drcl_fast import ops
from drcl_fast.ops import reference
from drcl_fast.runtime.backends import BackendError


def softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def gce_by_hand(logits, targets, q):
    total = 0.0
    for p, t in zip(logits, targets):
        s = sum(ti * pi for ti, pi in zip(t, softmax_row(p)))
        total += -math.log(s) if q == 0 else (1 - s ** q) / q
    return total / len(logits)


LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 0.0]]
ONE_HOT = [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
MIXED = [[0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [0.1, 0.9, 0.0]]   # gamma = 0.9 mixes
MULTI_HOT = [[1, 0, 1], [0, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("targets", [ONE_HOT, MIXED, MULTI_HOT], ids=["one-hot", "mixed", "multi-hot"])
def test_gce_matches_formula(q, targets):
    got = ops.gce_loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64), q)
    assert got.item() == pytest.approx(gce_by_hand(LOGITS, targets, q), rel=1e-12)


def test_gce_at_zero_is_the_limit_and_has_a_gradient():
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(ONE_HOT, dtype=torch.float64)
    at_zero = ops.gce_loss(logits, targets, 0.0)
    near_zero = ops.gce_loss(logits, targets, 1e-7)
    assert at_zero.item() == pytest.approx(near_zero.item(), rel=1e-5)
    at_zero.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_gce_q1_is_one_minus_mean_true_probability():
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    targets = torch.tensor(ONE_HOT, dtype=torch.float64)
    expected = 1 - (torch.softmax(logits, 1) * targets).sum(1).mean()
    assert ops.gce_loss(logits, targets, 1.0).item() == pytest.approx(expected.item(), rel=1e-12)


def cos2_by_hand(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return 2 * dot / max(na * nb, 1e-6)


def test_cos2_matches_formula_including_the_clamp():
    a = [[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [1e-4, 0.0, 0.0]]
    b = [[0.5, -1.0, 2.0], [3.0, 1.0, 1.0]]
    got = reference.cos2(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            assert got[i, j].item() == pytest.approx(cos2_by_hand(ai, bj), rel=1e-12, abs=1e-15)


def loss_terms_by_hand(f, y, pinv):
    """J_D and J_MSE by explicit loops over pairs, from the RSC table of docs/design.md section 1."""
    b, d = len(f), len(f[0])
    r = [[sum(y[i][c] * pinv[c][k] for c in range(len(y[0]))) for k in range(d)] for i in range(b)]
    within = sum((cos2_by_hand(r[i], r[j]) - cos2_by_hand(f[i], f[j])) ** 2
                 for i in range(b) for j in range(b)) / b ** 2
    cross = sum((cos2_by_hand(r[i], f[j]) - cos2_by_hand(r[j], f[i])) ** 2
                for i in range(b) for j in range(b)) / b ** 2
    mse = sum((r[i][k] - f[i][k]) ** 2 for i in range(b) for k in range(d)) / (b * d)
    return within + cross, mse


@pytest.mark.parametrize("labels", ["one-hot", "multi-hot"])
def test_drcl_loss_terms_match_formulas(labels):
    g = torch.Generator().manual_seed(3)
    b, d, c = 5, 7, 3
    f = torch.randn(b, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, c, generator=g, dtype=torch.float64)
    pinv = torch.linalg.pinv(w)
    if labels == "one-hot":
        y = torch.eye(c, dtype=torch.float64)[torch.tensor([0, 2, 1, 1, 0])]
    else:
        y = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    q = 0.37
    j_l, j_d, j_mse = ops.drcl_loss_terms(f, y, f @ w, pinv, q)
    want_d, want_mse = loss_terms_by_hand(f.tolist(), y.tolist(), pinv.tolist())
    assert j_l.item() == pytest.approx(gce_by_hand((f @ w).tolist(), y.tolist(), q), rel=1e-12)
    assert j_d.item() == pytest.approx(want_d, rel=1e-10)
    assert j_mse.item() == pytest.approx(want_mse, rel=1e-12)
    total = ops.drcl_loss(f, y, f @ w, pinv, q, alpha=0.3, beta=0.7, eta=1.5)
    assert total.item() == pytest.approx(1.5 * j_l.item() + 0.3 * want_d + 0.7 * want_mse, rel=1e-10)


def test_pinv_properties():
    prior = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    pinv = reference.prior_pinv(prior).double()
    p = prior.double()
    assert pinv.shape == (6, 40)
    torch.testing.assert_close(p @ pinv @ p, p, rtol=0, atol=1e-5)
    torch.testing.assert_close(pinv @ p @ pinv, pinv, rtol=0, atol=1e-5)
    torch.testing.assert_close((p @ pinv).t(), p @ pinv, rtol=0, atol=1e-5)
    torch.testing.assert_close(pinv @ p, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-5)


def test_pinv_of_orthonormal_columns_is_the_transpose():
    from drcl_fast.training.spl import initial_prior
    w0 = initial_prior(32, 5, seed=1)
    torch.testing.assert_close(reference.prior_pinv(w0), w0.t(), rtol=0, atol=1e-5)


def test_mixup_mixes_rows_and_labels_and_does_not_renormalise():
    f = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    y = torch.eye(4)
    perm = torch.tensor([1, 2, 3, 0])
    mf, my = ops.feature_mixup(f, y, 0.9, perm)
    torch.testing.assert_close(mf[0], 0.9 * f[0] + 0.1 * f[1])
    torch.testing.assert_close(my[3], 0.9 * y[3] + 0.1 * y[0])
    assert not torch.allclose(mf.norm(dim=1), torch.ones(4))
    same_f, same_y = ops.feature_mixup(f, y, 1.0, perm)   # gamma = 1: the "without FA" ablation
    torch.testing.assert_close(same_f, f)
    torch.testing.assert_close(same_y, y)


def test_q_ramp():
    assert [ops.gce_q(e) for e in (0, 1, 50, 100, 250)] == [0.0, 0.01, 0.5, 1.0, 1.0]


def test_unknown_or_unavailable_backend_is_a_clear_error(monkeypatch):
    logits, targets = torch.zeros(2, 3), torch.eye(3)[:2]
    monkeypatch.setitem(ops._REGISTRIES["gce_loss"], "triton", None)          # as in a process without Triton
    with pytest.raises(BackendError, match="'triton' is not available"):
        ops.gce_loss(logits, targets, 0.5, backend="triton")
    with pytest.raises(BackendError, match="unknown backend"):
        ops.gce_loss(logits, targets, 0.5, backend="fast")
    assert ops.gce_loss(logits, targets, 0.5, backend="torch") == ops.gce_loss(logits, targets, 0.5)


def test_a_backend_an_op_lacks_means_auto_for_that_op():
    """"cpp" names no training op and "restructured" only the loss: the others take auto's choice."""
    f = torch.nn.functional.normalize(torch.randn(64, 600, dtype=torch.float64), dim=1)
    targets = torch.eye(4, dtype=torch.float64)[torch.arange(64) % 4]
    w = torch.linalg.qr(torch.randn(600, 4, dtype=torch.float64))[0]
    auto = ops._pick("drcl_loss", "auto", f.device, targets)
    assert ops._pick("drcl_loss", "cpp", f.device, targets) is auto
    assert ops._pick("linear_relu", "restructured", f.device) is ops._pick("linear_relu", "auto", f.device)
    want = ops.drcl_loss_terms(f, targets, f @ w, w.T, 0.5, backend="auto")
    torch.testing.assert_close(ops.drcl_loss_terms(f, targets, f @ w, w.T, 0.5, backend="cpp"), want, rtol=0, atol=0)
