"""Encoder, W0, batching and SPL's choice of prior."""
from __future__ import annotations

import math

import pytest
import torch

from drcl_fast.model import Encoder, seeded_encoder
from drcl_fast.training.modality import epoch_draws
from drcl_fast.training.spl import SPLResult, initial_prior, select_prior


def test_encoder_shape_init_and_unit_rows():
    enc = Encoder(input_dim=9, hidden_dim=16, output_dim=12)
    layers = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in layers] == [(9, 16), (16, 16), (16, 12)]
    assert layers[-1].bias is None and layers[0].bias is not None
    assert layers[-1].weight.abs().max() <= 1 / math.sqrt(9)          # bound from the *input* width
    assert layers[-1].weight.abs().max() > 0.5 / math.sqrt(9)
    out = enc(torch.randn(5, 9))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_seeded_encoder_depends_on_seed_only():
    torch.manual_seed(123)
    a = seeded_encoder(7, 8, 4, seed=5)
    torch.manual_seed(999)
    b = seeded_encoder(7, 8, 4, seed=5)
    c = seeded_encoder(7, 8, 4, seed=6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_initial_prior_has_orthonormal_columns_and_is_seeded():
    w0 = initial_prior(64, 10, seed=1)
    assert w0.shape == (64, 10)
    torch.testing.assert_close(w0.t() @ w0, torch.eye(10), rtol=0, atol=1e-5)
    assert torch.equal(w0, initial_prior(64, 10, seed=1))
    assert not torch.equal(w0, initial_prior(64, 10, seed=2))


def test_batches_drop_the_last_partial_batch():
    batches, permutations = epoch_draws(10, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert batches.shape == (3, 3) and permutations is None
    assert batches.unique().numel() == 9


def test_epoch_draws_are_the_per_batch_draws_made_at_once():
    """The same generator stream as shuffling, then drawing each batch's Mixup permutation in turn."""
    batches, permutations = epoch_draws(23, 5, torch.Generator().manual_seed(3), torch.device("cpu"), mixup=True)
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(23, generator=g)
    for b in range(4):
        assert torch.equal(batches[b], order[5 * b:5 * (b + 1)])
        assert torch.equal(permutations[b], torch.randperm(5, generator=g))
    assert permutations.shape == (4, 5)
    none, empty = epoch_draws(4, 5, torch.Generator().manual_seed(3), torch.device("cpu"), mixup=True)
    assert none.shape == (0, 5) and empty.shape == (0, 5)


def spl_result(name, scores, best_value):
    return SPLResult(name, best_prior=torch.full((2, 2), best_value), final_prior=torch.full((2, 2), -1.0),
                     best_epoch=max(scores, key=scores.get), scores=scores)


def test_select_prior_takes_the_best_scoring_modality_at_its_best_epoch():
    results = [spl_result("img", {1: 0.3, 2: 0.5}, 1.0), spl_result("txt", {1: 0.6, 2: 0.4}, 2.0)]
    choice, prior = select_prior(results)
    assert choice == 1 and results[1].best_score == 0.6
    assert torch.equal(prior, torch.full((2, 2), 2.0))
    _, slipped = select_prior(results, released_slip=True)          # the released aliasing slip
    assert torch.equal(slipped, torch.full((2, 2), -1.0))


def test_select_prior_ties_go_to_the_first_modality():
    results = [spl_result("a", {1: 0.5}, 1.0), spl_result("b", {1: 0.5}, 2.0)]
    assert select_prior(results)[0] == 0


def test_select_prior_without_scores_is_an_error():
    with pytest.raises(ValueError, match="sample_interval"):
        select_prior([SPLResult("a", torch.zeros(1), torch.zeros(1), best_epoch=0)])
