"""The C++ training step (drcl_fast.training._step_cpp) against the Python closed-form step: the same bits."""
from __future__ import annotations

import pytest
import torch

from drcl_fast import ops
from drcl_fast.model import seeded_encoder
from drcl_fast.training import encoder_step, rsc, spl
from drcl_fast.training.encoder_step import EncoderStep
from tests.training.test_encoder_step import step_batch

pytestmark = pytest.mark.skipif(not encoder_step.NATIVE_AVAILABLE, reason="drcl_fast.training._step_cpp is not built "
                                "(make test requires it: tests/conftest.py)")

# (B, d_in, H, D, C, dtype): the demo's step; odd sizes with the recast as a sparse product (C = 5) or a
# dense one (C = 3); two row panels with a split diagonal block (B > PANEL_ROWS); float64.
CASES = [(140, 216, 1024, 512, 10, torch.float32), (301, 19, 65, 33, 5, torch.float32),
         (1100, 19, 65, 200, 3, torch.float32), (301, 19, 65, 33, 5, torch.float64)]


def _rsc_step(batch: dict, h: int, native: bool, calls: list, compute_dtype: torch.dtype | None = None) -> tuple:
    encoder = seeded_encoder(batch["x"].shape[1], h, batch["prior"].shape[0], 3,
                             compute_dtype=compute_dtype).to(batch["x"].dtype)
    step = EncoderStep(encoder)
    real = step.native_rsc
    step.native_rsc = (lambda *a: calls.append(real(*a)) or calls[-1]) if native else (lambda *a: None)
    settings = rsc.RSCSettings(lr=1e-3, epochs=1, batch_size=batch["x"].shape[0], hidden_dim=h)
    rsc_step = rsc.RSCStep(encoder, step, batch["prior"], batch["pinv"], settings, batch["targets"])
    loss, terms = rsc_step(batch["x"], batch["targets"], batch["permutation"], 0.5)
    return loss, terms, [p.grad for p in encoder.parameters()]


# A bf16 run's step (float32 master weights, bf16 products), at odd sizes.
BF16_CASES = [(301, 19, 65, 33, 5), (140, 37, 129, 65, 10)]


@pytest.mark.parametrize("b, d_in, h, d, c, dtype, compute_dtype",
                         [(*case, None) for case in CASES] +
                         [(*case, torch.float32, torch.bfloat16) for case in BF16_CASES])
def test_the_rsc_step_gives_the_python_steps_bits(b, d_in, h, d, c, dtype, compute_dtype):
    batch = step_batch(b, d_in, d, c, dtype)
    calls = []
    native = _rsc_step(batch, h, True, calls, compute_dtype)
    assert calls and calls[0] is not None, "the C++ step did not run"
    python = _rsc_step(batch, h, False, [], compute_dtype)
    assert torch.equal(native[0], python[0])
    assert all(torch.equal(a, b) for a, b in zip(native[1], python[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(native[2], python[2], strict=True))


@pytest.mark.parametrize("b, d_in, h, d, c, dtype, compute_dtype",
                         [(*case, None) for case in CASES[:2]] + [(*BF16_CASES[0], torch.float32, torch.bfloat16)])
def test_the_spl_step_gives_the_python_steps_bits(b, d_in, h, d, c, dtype, compute_dtype):
    batch = step_batch(b, d_in, d, c, dtype)
    results = []
    for native in (True, False):
        encoder = seeded_encoder(d_in, h, d, 3, compute_dtype=compute_dtype).to(dtype)
        step = EncoderStep(encoder)
        prior = torch.nn.Parameter(batch["prior"].clone())
        if not native:
            step.native_spl = lambda *a: None
        else:
            assert step.native_spl(batch["x"], batch["targets"], prior, 0.3) is not None
            encoder.zero_grad(set_to_none=True)
            prior.grad = None
        loss = spl.SPLStep(encoder, step, prior, "auto")(batch["x"], batch["targets"], 0.3)
        results.append([loss, *(p.grad for p in (*encoder.parameters(), prior))])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_cases_the_python_step_handles_return_none():
    """A clamp that may bind (targets so small that |r_i| |r_j| < 1e-6), narrow sparse labels (C = 40)
    and the logits route (C >= 32, a well-conditioned prior) are the Python step's: the C++ step
    declines them, before any gradient is written."""
    g = torch.Generator().manual_seed(5)
    for b, d_in, d, c, case in ((301, 19, 33, 5, "tiny"), (301, 19, 64, 40, "one-hot"), (301, 19, 64, 40, "multi-hot")):
        batch = step_batch(b, d_in, d, c, torch.float32)
        targets = {"tiny": batch["targets"] * 1e-4, "one-hot": batch["targets"],
                   "multi-hot": (torch.rand(b, c, generator=g) < 0.3).float().clamp_min(batch["targets"])}[case]
        assert ops.forms_gradients(ops.drcl_loss_implementation(b, d, targets, batch["pinv"], "auto"))
        encoder = seeded_encoder(d_in, 48, d, 3)
        step = EncoderStep(encoder)
        assert step.native_rsc(batch["x"], targets, batch["permutation"], batch["prior"], batch["pinv"],
                               0.5, 0.9, (1.0, 0.1, 0.1)) is None
        assert all(p.grad is None for p in encoder.parameters())


def test_a_gradient_to_add_to_goes_to_the_python_step():
    batch = step_batch(301, 19, 33, 5, torch.float64)
    encoder = seeded_encoder(19, 48, 33, 3).double()
    encoder.head.weight.grad = torch.zeros_like(encoder.head.weight)
    step = EncoderStep(encoder)
    assert step.native_rsc(batch["x"], batch["targets"], batch["permutation"], batch["prior"], batch["pinv"],
                           0.5, 0.9, (1.0, 0.1, 0.1)) is None
