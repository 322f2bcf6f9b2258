"""End to end on the bundled mfeat data: training quality, determinism, ablations, outputs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.io as sio
import torch

from drcl_fast import DRCL
from drcl_fast.model import encoder_from_state
from drcl_fast.ops import reference
from drcl_fast.outputs import OutputExistsError
from drcl_fast.training import rsc
from drcl_fast.training.modality import ModalityData, encode
from drcl_fast.training.spl import initial_prior
from drcl_fast.training.trainer import fit


def test_short_training_beats_random_retrieval_by_far(mfeat, tiny_config):
    result = fit(mfeat, tiny_config.replace(epochs=8, hidden_shape=64), progress=False)
    map_all, map_50 = result.metrics
    assert len(map_all.directions) == 30
    # Random ranking of 10 balanced classes gives MAP@all of about 0.1.
    assert map_all.mean > 0.5, map_all.directions
    assert min(map_all.directions.values()) > 0.25
    assert map_50.k == 50 and map_50.mean > 0.5


def test_same_seed_gives_identical_metrics(mfeat, tiny_config, tmp_path):
    a = fit(mfeat, tiny_config.replace(out=str(tmp_path / "a")), progress=False)
    b = fit(mfeat, tiny_config.replace(out=str(tmp_path / "b")), progress=False)
    assert a.metrics[0].directions == b.metrics[0].directions
    assert all(np.array_equal(a.rsc[k].test_embeddings, b.rsc[k].test_embeddings) for k in a.rsc)
    c = fit(mfeat, tiny_config.replace(out=str(tmp_path / "c"), seed=2), progress=False)
    assert c.metrics[0].directions != a.metrics[0].directions


def test_spl_scores_choice_and_best_epoch_prior_are_readable(mfeat, tiny_config):
    result = fit(mfeat, tiny_config, progress=False)
    assert len(result.spl) == 6
    for r in result.spl:
        assert sorted(r.scores) == [1, 2, 3, 4]
        assert r.best_score == max(r.scores.values())
        assert all(0.0 < s <= 1.0 for s in r.scores.values())
    best = max(range(6), key=lambda k: result.spl[k].best_score)
    assert result.spl_choice == best
    assert torch.equal(result.prior, result.spl[best].best_prior)
    assert result.prior_source == f"spl:{mfeat.modalities[best]}"
    saved = sio.loadmat(f"{tiny_config.out}/PriorW/W_16X10mfeat.mat")["W"]
    np.testing.assert_array_equal(saved, result.prior.numpy())
    for k in range(6):
        per_view = sio.loadmat(f"{tiny_config.out}/PriorW/W_16X10mfeat{k}.mat")["W"]
        np.testing.assert_array_equal(per_view, result.spl[k].best_prior.numpy())


def test_released_prior_slip_keeps_the_final_epoch(mfeat, tiny_config):
    result = fit(mfeat, tiny_config.replace(released_prior_slip=True), progress=False)
    assert torch.equal(result.prior, result.spl[result.spl_choice].final_prior)


def test_without_spl_uses_w0(mfeat, tiny_config):
    result = fit(mfeat, tiny_config.replace(prior="w0"), progress=False)
    assert result.spl == [] and result.prior_source == "w0"
    assert torch.equal(result.prior, initial_prior(16, 10, tiny_config.seed))


def test_without_mrr_and_without_fa_still_train(mfeat, tiny_config, tmp_path):
    no_mrr = fit(mfeat, tiny_config.replace(prior="w0", alpha=0.0, beta=0.0, out=str(tmp_path / "m")),
                 progress=False)
    no_fa = fit(mfeat, tiny_config.replace(prior="w0", gamma=1.0, out=str(tmp_path / "f")), progress=False)
    full = fit(mfeat, tiny_config.replace(prior="w0", out=str(tmp_path / "x")), progress=False)
    for run in (no_mrr, no_fa):
        assert run.metrics[0].mean > 0.3
        assert run.metrics[0].directions != full.metrics[0].directions


def test_without_mrr_the_encoder_learns_from_gce_alone(mfeat, tiny_config, tmp_path, monkeypatch):
    """alpha = beta = 0: J_D and J_MSE are still computed and logged, non-zero, but none of their
    gradient reaches the encoder: the run matches one whose loss is the reference GCE alone."""
    config = tiny_config.replace(prior="w0", view_id=2)
    full = fit(mfeat, config.replace(out=str(tmp_path / "x")), progress=False).rsc[2]
    no_mrr = fit(mfeat, config.replace(alpha=0.0, beta=0.0, out=str(tmp_path / "m")), progress=False).rsc[2]

    def gce_alone(step, x, targets, permutation, q):
        s = step.s
        _, logits = step.encoder.mixed_forward(x, permutation, s.gamma, step.prior, "torch")
        j_l = reference.gce_loss(logits, reference.mix_rows(targets, s.gamma, permutation), q)
        (s.eta * j_l).backward()
        return s.eta * j_l, (j_l, torch.zeros_like(j_l), torch.zeros_like(j_l))

    monkeypatch.setattr(rsc.RSCStep, "__call__", gce_alone)
    alone = fit(mfeat, config.replace(alpha=0.0, beta=0.0, out=str(tmp_path / "g")), progress=False).rsc[2]
    assert all(h["J_D"] > 1e-3 and h["J_MSE"] > 1e-3 for h in no_mrr.history)
    gap = np.abs(no_mrr.test_embeddings - alone.test_embeddings).max()
    assert gap <= 1e-5 < np.abs(no_mrr.test_embeddings - full.test_embeddings).max() / 1000, gap


def test_given_prior_file_and_a_single_view(mfeat, tiny_config, tmp_path):
    prior = initial_prior(16, 10, seed=7).numpy()
    path = tmp_path / "prior.mat"
    sio.savemat(path, {"W": prior})
    result = fit(mfeat, tiny_config.replace(prior=str(path), view_id=2), progress=False)
    np.testing.assert_array_equal(result.prior.numpy(), prior)
    assert list(result.rsc) == [2] and result.metrics == []     # the other views have no features yet
    features = sio.loadmat(f"{tiny_config.out}/features/mfeat_2.mat")
    assert features["test_fea"].shape == (400, 16) and features["test_pred"].shape == (400, 10)
    np.testing.assert_array_equal(features["test_lab"].reshape(-1), mfeat.test.labels[2])


def test_view_runs_one_by_one_then_evaluate_all(mfeat, tiny_config):
    fit(mfeat, tiny_config.replace(prior="w0"), progress=False)                  # writes all features
    again = fit(mfeat, tiny_config.replace(prior="w0", view_id=0, overwrite=True), progress=False)
    assert list(again.rsc) == [0] and len(again.metrics) == 2                    # 1..5 read from disk


def test_prior_file_of_the_wrong_shape_is_refused(mfeat, tiny_config, tmp_path):
    path = tmp_path / "prior.mat"
    sio.savemat(path, {"W": np.zeros((16, 9), dtype=np.float32)})
    with pytest.raises(ValueError, match="16 x 10"):
        fit(mfeat, tiny_config.replace(prior=str(path)), progress=False)


def test_existing_outputs_are_not_overwritten_without_permission(mfeat, tiny_config):
    fit(mfeat, tiny_config.replace(prior="w0"), progress=False)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        fit(mfeat, tiny_config.replace(prior="w0"), progress=False)
    fit(mfeat, tiny_config.replace(prior="w0", overwrite=True), progress=False)


def test_fewer_rows_than_a_batch_is_refused_before_training(mfeat, tiny_config):
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(mfeat, tiny_config.replace(batch_size=5000), progress=False)


def test_modern_api_encodes_with_the_selected_encoder(mfeat, tiny_config):
    model = DRCL(tiny_config.replace(prior="w0")).fit(mfeat)
    emb = model.encode("pix", mfeat.test.features[3], preprocessed=True)
    np.testing.assert_allclose(emb.numpy(), model.result.rsc[3].test_embeddings, rtol=1e-5, atol=1e-6)
    assert model.encode(3, mfeat.test.features[3][:2], preprocessed=True).shape == (2, 16)
    assert model.metrics[0].mean > 0.3


def test_an_evaluator_backend_missing_here_is_refused_before_training(mfeat, tiny_config, monkeypatch):
    """--backend cpp names the evaluator only: without the extension the run stops before it trains."""
    from drcl_fast.retrieval import cpp
    from drcl_fast.runtime.backends import BackendError
    monkeypatch.setattr(cpp, "AVAILABLE", False)
    monkeypatch.setattr("drcl_fast.training.trainer._fit", lambda *args: pytest.fail("training started"))
    with pytest.raises(BackendError, match="evaluate_map: backend 'cpp' is not available"):
        fit(mfeat, tiny_config.replace(backend="cpp"), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: host synchronisation, which this checks for, exists only there")
def test_the_batch_loops_make_no_host_synchronisation_on_a_gpu(mfeat, tiny_config, monkeypatch):
    """Every SPL and RSC batch loop of a whole run under torch.cuda.set_sync_debug_mode("error")."""
    from drcl_fast.training.modality import SYNC_CHECK_ENV
    monkeypatch.setenv(SYNC_CHECK_ENV, "1")
    result = fit(mfeat, tiny_config.replace(device="cuda", epochs=2), progress=False)
    assert torch.cuda.get_sync_debug_mode() == 0 and result.metrics[0].mean > 0.1


def test_the_sync_check_does_nothing_on_the_cpu(monkeypatch):
    from drcl_fast.training.modality import SYNC_CHECK_ENV, batch_loop
    monkeypatch.setenv(SYNC_CHECK_ENV, "1")
    with batch_loop(torch.device("cpu")):
        assert float(torch.ones(2).sum()) == 2.0   # a host read: allowed on the CPU


def test_the_test_split_is_encoded_once_from_the_selected_weights(mfeat, monkeypatch):
    """Selection keeps the best epoch's weights; its test outputs are encoded when the run ends, bit for bit
    those of a run that stops at that epoch."""
    data = ModalityData.from_dataset(mfeat, 1, torch.device("cpu"))
    prior = initial_prior(16, mfeat.num_classes, 1)
    real, test_encodes = rsc.encode, []

    def counting(model, x):
        test_encodes.extend([1] if x is data.test_x else [])
        return real(model, x)

    monkeypatch.setattr(rsc, "encode", counting)
    settings = rsc.RSCSettings(lr=1e-3, epochs=6, batch_size=200, hidden_dim=32)
    whole = rsc.train_rsc(data, prior, settings, progress=False)
    assert len(test_encodes) == 1 and 1 <= whole.best_epoch <= 6
    selected = encode(encoder_from_state(whole.encoder_state), data.test_x)
    np.testing.assert_array_equal(whole.test_embeddings, selected.numpy())
    np.testing.assert_array_equal(whole.test_probabilities, torch.softmax(selected @ prior, dim=1).numpy())
    stopped = rsc.train_rsc(data, prior, dataclasses.replace(settings, epochs=whole.best_epoch), progress=False)
    assert stopped.best_epoch == whole.best_epoch
    np.testing.assert_array_equal(stopped.test_embeddings, whole.test_embeddings)
