"""The closed-form encoder step against its reference twin, autograd through the Encoder module."""
from __future__ import annotations

import pytest
import torch

from drcl_fast import ops
from drcl_fast.model import seeded_encoder
from drcl_fast.training import rsc, spl
from drcl_fast.training.encoder_step import EncoderStep, closed_form_applies, step_for
from drcl_fast.training.modality import ModalityData
from drcl_fast.training.spl import initial_prior

# Odd sizes: no width a multiple of a vector or a block. At B rows the RSC loss is the reference
# (autograd runs the step's tail); at LOSS_BY_HAND_ROWS the restructured engine, whose gradients the
# step takes by hand.
B, D_IN, H, D, C = 37, 19, 65, 33, 5
LOSS_BY_HAND_ROWS = 301
# float32: elementwise, against the largest gradient entry; float64 to a few roundings.
TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-13}


def step_batch(rows: int, d_in: int, d: int, c: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """One step's inputs: features, one-hot targets, a Mixup permutation, a prior and its pseudo-inverse."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.zeros(rows, c, dtype=dtype)
    targets[torch.arange(rows), torch.randint(0, c, (rows,), generator=g)] = 1
    prior = initial_prior(d, c, seed + 1).to(dtype)
    return dict(x=torch.randn(rows, d_in, generator=g, dtype=dtype), targets=targets,
                permutation=torch.randperm(rows, generator=g), prior=prior, pinv=ops.prior_pinv(prior))


def _batch(dtype: torch.dtype, seed: int = 0, rows: int = B) -> dict:
    return step_batch(rows, D_IN, D, C, dtype, seed)


def _rsc_grads(dtype: torch.dtype, closed: bool, batch: dict) -> tuple[float, list[torch.Tensor]]:
    encoder = seeded_encoder(D_IN, H, D, 3).to(dtype)
    settings = rsc.RSCSettings(lr=1e-3, epochs=1, batch_size=batch["x"].shape[0], hidden_dim=H)
    step = rsc.RSCStep(encoder, EncoderStep(encoder) if closed else None, batch["prior"], batch["pinv"], settings,
                       batch["targets"])
    loss, _ = step(batch["x"], batch["targets"], batch["permutation"], 0.5)
    return loss.item(), [p.grad for p in encoder.parameters()]


def _spl_grads(dtype: torch.dtype, closed: bool, batch: dict) -> tuple[float, list[torch.Tensor]]:
    encoder = seeded_encoder(D_IN, H, D, 3).to(dtype)
    prior = torch.nn.Parameter(batch["prior"].clone())
    step = spl.SPLStep(encoder, EncoderStep(encoder) if closed else None, prior, "auto")
    loss = step(batch["x"], batch["targets"], 0.3)
    return loss.item(), [p.grad for p in (*encoder.parameters(), prior)]


def _assert_close(closed: list[torch.Tensor], reference: list[torch.Tensor], dtype: torch.dtype) -> None:
    for got, want in zip(closed, reference, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        worst = (got - want).abs().max().item()
        assert worst <= TOLERANCE[dtype] * want.abs().max().item(), worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("phase, rows", [("rsc", B), ("rsc", LOSS_BY_HAND_ROWS), ("spl", B)])
def test_closed_form_gradients_equal_autograd(phase: str, rows: int, dtype: torch.dtype) -> None:
    grads = _rsc_grads if phase == "rsc" else _spl_grads
    batch = _batch(dtype, rows=rows)
    if phase == "rsc":   # both tails are exercised: autograd's, and the loss's own gradients by hand
        implementation = ops.drcl_loss_implementation(rows, D, batch["targets"], batch["pinv"], "auto")
        assert ops.forms_gradients(implementation) is (rows == LOSS_BY_HAND_ROWS)
    loss_closed, closed = grads(dtype, True, batch)
    loss_ref, reference = grads(dtype, False, batch)
    assert loss_closed == loss_ref   # the forward runs the same ops: the same bits
    assert all(g.abs().max() > 0 for g in reference)   # every layer gets a gradient to compare
    _assert_close(closed, reference, dtype)


def test_the_forward_gives_the_encoders_bits() -> None:
    encoder = seeded_encoder(D_IN, H, D, 5)
    x = torch.randn(B, D_IN)
    seen = []
    EncoderStep(encoder).loss_and_grads(x, lambda unit: (seen.append(unit.detach().clone()) or unit.sum(), None))
    with torch.no_grad():
        assert torch.equal(seen[0], encoder(x))


def test_gradients_accumulate_as_autograd_does() -> None:
    """Two steps without zeroing sum their gradients, whether .grad is the step's own buffer
    (zero_grad(set_to_none=False) zeroes it in place) or a tensor of the caller's."""
    batch = _batch(torch.float64, seed=4)
    encoder = seeded_encoder(D_IN, H, D, 3).double()
    step = EncoderStep(encoder)

    def run() -> None:
        step.loss_and_grads(batch["x"], lambda unit: ((unit @ batch["prior"]).square().sum(), None))

    run()
    once = [p.grad.clone() for p in encoder.parameters()]
    run()   # .grad is the step's buffer now
    assert all(torch.allclose(p.grad, 2 * g, rtol=1e-12, atol=0) for p, g in zip(encoder.parameters(), once))
    for p, g in zip(encoder.parameters(), once):
        p.grad = g.clone()   # a gradient the step does not own
    run()
    assert all(torch.allclose(p.grad, 2 * g, rtol=1e-12, atol=0) for p, g in zip(encoder.parameters(), once))


def test_a_new_batch_size_gets_new_buffers() -> None:
    encoder = seeded_encoder(D_IN, H, D, 3).double()
    step = EncoderStep(encoder)
    for rows in (B, B - 10, B):
        x = torch.randn(rows, D_IN, dtype=torch.float64)
        encoder.zero_grad(set_to_none=True)
        step.loss_and_grads(x, lambda unit: (unit[:, 0].sum(), None))
        closed = [p.grad.clone() for p in encoder.parameters()]
        encoder.zero_grad(set_to_none=True)
        encoder(x)[:, 0].sum().backward()
        _assert_close(closed, [p.grad for p in encoder.parameters()], torch.float64)


@pytest.mark.parametrize("backend, applies", [("auto", True), ("restructured", True), ("cpp", True),
                                              ("torch", False)])
def test_the_closed_form_runs_on_the_cpu_unless_the_reference_is_asked_for(backend: str, applies: bool) -> None:
    assert closed_form_applies(backend, torch.device("cpu")) is applies
    step = step_for(seeded_encoder(D_IN, H, D, 3), backend, torch.device("cpu"))
    assert (step is not None) is applies


def test_the_triton_layers_keep_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton", reason="the Triton layers need Triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not closed_form_applies("triton", torch.device("cpu"))


def _unit_data(n: int, c: int, seed: int) -> ModalityData:
    """A small modality: n training rows of width 23, 20 validation and 15 test rows, c classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    return ModalityData("m", torch.randn(n, 23, generator=g), torch.eye(c)[labels],
                        torch.randn(20, 23, generator=g), torch.eye(c)[torch.randint(0, c, (20,), generator=g)],
                        torch.randn(15, 23, generator=g), labels[:15].numpy())


def test_a_short_training_run_matches_the_autograd_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed, with and without the closed form: per-epoch losses to float32 rounding, the same
    selection, test embeddings close."""
    c = 4
    data = _unit_data(60, c, seed=7)
    settings = rsc.RSCSettings(lr=1e-3, epochs=4, batch_size=16, hidden_dim=48)
    prior = initial_prior(32, c, 1)
    closed = rsc.train_rsc(data, prior, settings, progress=False)
    monkeypatch.setattr(rsc, "step_for", lambda *args: None)
    reference = rsc.train_rsc(data, prior, settings, progress=False)
    for a, b in zip(closed.history, reference.history, strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])) for k in a)
    assert closed.best_epoch == reference.best_epoch
    assert torch.allclose(torch.from_numpy(closed.test_embeddings), torch.from_numpy(reference.test_embeddings),
                          atol=1e-5)


def test_without_the_extension_the_python_step_runs_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from drcl_fast.runtime import backends
    from drcl_fast.training import encoder_step
    monkeypatch.setattr(encoder_step, "_step_cpp", None)
    monkeypatch.setattr(encoder_step, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(backends, "_already_said", set())
    with pytest.warns(RuntimeWarning, match="_step_cpp is not built: CPU training steps run in Python"):
        step = step_for(seeded_encoder(D_IN, H, D, 3), "auto", torch.device("cpu"))
    batch = _batch(torch.float64, rows=LOSS_BY_HAND_ROWS)
    assert step.native_rsc(batch["x"], batch["targets"], batch["permutation"], batch["prior"], batch["pinv"],
                           0.5, 0.9, (1.0, 0.1, 0.1)) is None
    loss_closed, closed = _rsc_grads(torch.float64, True, batch)     # the Python closed form, unchanged
    _assert_close(closed, _rsc_grads(torch.float64, False, batch)[1], torch.float64)


def test_a_unit_chooses_its_route_once_and_each_batch_runs_straight_down_it(monkeypatch) -> None:
    """The loss's implementation and the step's route are chosen when the unit starts: no batch asks again."""
    asked = []
    choose = ops.drcl_loss_implementation
    monkeypatch.setattr(ops, "drcl_loss_implementation", lambda *args: asked.append(args[0]) or choose(*args))
    c = 4
    data = _unit_data(64, c, seed=5)
    settings = rsc.RSCSettings(lr=1e-3, epochs=3, batch_size=16, hidden_dim=48)
    rsc.train_rsc(data, initial_prior(32, c, 1), settings, progress=False)
    # One choice at the start (the loss's implementation, which also says whether it forms its gradients),
    # then one per validation (the whole split, unmixed: not a training batch); 4 batches x 3 epochs asked nothing.
    assert asked == [16] + [20] * 3


@pytest.mark.parametrize("backend, rows, route", [("auto", 16, "closed form"), ("auto", LOSS_BY_HAND_ROWS, "by hand"),
                                                  ("torch", 16, "autograd")])
def test_the_route_follows_backend_and_batch_shape(backend: str, rows: int, route: str) -> None:
    batch = _batch(torch.float32, rows=rows)
    encoder = seeded_encoder(D_IN, H, D, 3)
    s = rsc.RSCSettings(lr=1e-3, epochs=1, batch_size=rows, hidden_dim=H, backend=backend)
    assert rsc.rsc_step(encoder, batch["prior"], batch["pinv"], s, batch["targets"]).route == route
