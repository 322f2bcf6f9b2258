"""Training with the fast backends against the reference: same seed, same curves, same MAP.

Tolerances (float32), established by measuring these runs (docs/kernels.md):
the restructured loss over 300 RSC steps per view keeps every epoch's mean training
and validation J within 2e-3 relative of the reference's (measured: 3.2e-4) and the
final MAP@all within 0.004 (measured: 4e-4); on multi-label data with C = 64 over
200 steps per view, the same bounds (measured: 5.0e-5 and 2.7e-5); the Triton kernels,
under the interpreter, over 20 steps, within 1e-4 (measured: 1.2e-7). Rounding
differences grow over training, so the bounds widen with the number of steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from drcl_fast import ops
from drcl_fast.data.container import MultiModalData, Split
from drcl_fast.model import seeded_encoder
from drcl_fast.retrieval import evaluate_map
from drcl_fast.runtime import backends
from drcl_fast.training.modality import ModalityData
from drcl_fast.training.rsc import RSCSettings, batch_loss, train_rsc
from drcl_fast.training.spl import initial_prior
from tests.support import HAVE_TRITON

VIEWS = (0, 3)   # fou and pix: the weakest and a strong view of mfeat
J_TOLERANCE, MAP_TOLERANCE = 2e-3, 4e-3


def train_views(data, backend: str, epochs: int, hidden: int, batch: int, output_dim: int = 32,
                views: tuple[int, int] = VIEWS) -> list:
    prior = initial_prior(output_dim, data.num_classes, seed=1)
    settings = RSCSettings(lr=1e-3, epochs=epochs, batch_size=batch, hidden_dim=hidden, backend=backend)
    return [train_rsc(ModalityData.from_dataset(data, k, torch.device("cpu")), prior, settings, progress=False)
            for k in views]


def multilabel_data(classes: int = 64, widths: tuple[int, int] = (48, 40), seed: int = 0) -> MultiModalData:
    """Two views of items with one or two of `classes` labels each (no row without one): each view's
    features are its class centres summed over the item's labels, plus noise."""
    rng = np.random.default_rng(seed)
    centres = [rng.standard_normal((classes, d)).astype(np.float32) for d in widths]

    def split(n: int) -> Split:
        labels = np.zeros((n, classes), dtype=np.float32)
        labels[np.arange(n), rng.integers(0, classes, n)] = 1.0
        second = np.flatnonzero(rng.random(n) < 0.5)
        labels[second, rng.integers(0, classes, second.size)] = 1.0
        features = [labels @ c + rng.standard_normal((n, c.shape[1])).astype(np.float32) for c in centres]
        return Split(features, [labels, labels])

    return MultiModalData("multilabel", ["a", "b"], split(1000), split(200), split(300))


def mean_map(runs) -> float:
    a, b = runs
    return (evaluate_map(a.test_embeddings, a.test_labels, b.test_embeddings, b.test_labels, backend="torch")
            + evaluate_map(b.test_embeddings, b.test_labels, a.test_embeddings, a.test_labels, backend="torch")) / 2


def worst_curve_gap(runs, reference_runs) -> float:
    gaps = []
    for run, ref in zip(runs, reference_runs):
        got, want = (np.array([[h[t] for t in ("J", "val")] for h in r.history]) for r in (run, ref))
        gaps.append(np.max(np.abs(got - want) / np.abs(want)))
    return max(gaps)


def test_restructured_loss_trains_like_the_reference(mfeat):
    # 1400 training rows / 140 = 10 steps an epoch: 300 steps per view.
    reference = train_views(mfeat, "torch", epochs=30, hidden=64, batch=140)
    fast = train_views(mfeat, "restructured", epochs=30, hidden=64, batch=140)
    assert worst_curve_gap(fast, reference) <= J_TOLERANCE
    assert abs(mean_map(fast) - mean_map(reference)) <= MAP_TOLERANCE
    assert mean_map(reference) > 0.5       # it did learn: the comparison is not between two failures


def test_restructured_loss_trains_like_the_reference_on_multilabel_data(monkeypatch):
    """C = 64, one or two labels an item: the gathered label products, the CSR recast and P from the
    logits (an orthonormal prior, C >= 32) all run, and the training matches the reference's."""
    from drcl_fast.ops import restructured
    data = multilabel_data()
    reference = train_views(data, "torch", epochs=20, hidden=64, batch=100, output_dim=64, views=(0, 1))
    routes = {"sparse labels": 0, "sparse recast": 0, "P from the logits": 0, "calls": 0}
    coordinates, residual, of = restructured.coordinates, restructured.scaled_residual, restructured.Labels.of

    def spy_coordinates(features, nf, logits, pinv, core):
        p = coordinates(features, nf, logits, pinv, core)
        routes["calls"] += 1
        routes["P from the logits"] += not torch.equal(p, features @ pinv.t())
        return p

    def spy_residual(targets, pinv, features, scale, sparse, out=None):
        routes["sparse recast"] += sparse is not None
        return residual(targets, pinv, features, scale, sparse, out=out)

    def spy_labels(targets, sparse):
        labels = of(targets, sparse)
        routes["sparse labels"] += labels.sparse is not None
        return labels

    monkeypatch.setattr(restructured, "coordinates", spy_coordinates)
    monkeypatch.setattr(restructured, "scaled_residual", spy_residual)
    monkeypatch.setattr(restructured.Labels, "of", staticmethod(spy_labels))
    fast = train_views(data, "restructured", epochs=20, hidden=64, batch=100, output_dim=64, views=(0, 1))
    assert all(count == routes["calls"] > 0 for count in routes.values()), routes
    assert worst_curve_gap(fast, reference) <= J_TOLERANCE
    assert abs(mean_map(fast) - mean_map(reference)) <= MAP_TOLERANCE
    assert mean_map(reference) > 0.3


@pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")
def test_triton_kernels_train_like_the_reference(mfeat, monkeypatch):
    """The whole fused step (encoder kernels, Mixup tail, loss) through rsc's own dispatch."""
    from drcl_fast.kernels.precision import precision
    reference = train_views(mfeat, "torch", epochs=2, hidden=32, batch=140)
    device = "cuda" if torch.cuda.is_available() else "cpu"   # the interpreter runs CPU tensors
    monkeypatch.setitem(backends.AUTO_PREFERENCE, device, ("triton", "torch"))
    with precision("fp32"):
        fast = train_views(mfeat, "auto", epochs=2, hidden=32, batch=140)
    assert worst_curve_gap(fast, reference) <= 1e-4


def compiled_step_available() -> bool:
    from drcl_fast.kernels import custom_op
    return custom_op.AVAILABLE and hasattr(torch, "compile")


@pytest.mark.skipif(not compiled_step_available(), reason="needs torch.library.custom_op and torch.compile")
def test_a_training_step_compiles_whole_and_matches_eager(mfeat, monkeypatch, tmp_path):
    """torch.compile(fullgraph=True) captures encode, Mixup, the fused loss and its backward."""
    # A fresh inductor cache: a cached graph from an older version of the ops would be reused.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    data = ModalityData.from_dataset(mfeat, 0, torch.device("cpu"))
    prior = initial_prior(16, mfeat.num_classes, seed=1)
    pinv = ops.prior_pinv(prior)
    settings = RSCSettings(lr=1e-3, epochs=1, batch_size=64, hidden_dim=32, backend="restructured")
    x, t = data.train_x[:64], data.train_t[:64]
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))

    def step(encoder):
        loss, _ = batch_loss(encoder, x, t, perm, prior, pinv, 0.5, settings)
        return loss

    grads = []
    for run in (step, torch.compile(step, fullgraph=True)):
        encoder = seeded_encoder(data.input_dim, 32, 16, seed=3)
        loss = run(encoder)
        loss.backward()
        grads.append([loss.detach()] + [p.grad for p in encoder.parameters()])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
