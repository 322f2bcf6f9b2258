"""Synthetic NUS-WIDE / MS-COCO stand-ins: sizes, label statistics, structure, determinism."""
from __future__ import annotations

import pytest
import torch

from drcl_fast.data.synthetic import PRESETS, class_weights, make_retrieval_set
from drcl_fast.errors import ConfigError
from drcl_fast.retrieval import evaluate_map


def test_presets_have_the_real_sizes():
    nus, single, coco = PRESETS["nus-wide"], PRESETS["nus-wide-single"], PRESETS["mscoco"]
    assert (nus.classes, nus.multilabel, nus.num_queries) == (21, True, 2_100) and 185_000 < nus.gallery_size < 200_000
    assert (single.classes, single.multilabel) == (10, False)
    assert 23_000 < single.num_queries == single.gallery_size < 24_500
    assert (coco.classes, coco.multilabel, coco.num_queries) == (80, True, 5_000) and 110_000 < coco.gallery_size < 120_000


@pytest.mark.parametrize("preset,mean_labels", [("nus-wide", 1.9), ("mscoco", 2.9)])
def test_multilabel_statistics(preset, mean_labels):
    data = make_retrieval_set(preset, dim=8, num_queries=50, gallery_size=20_000)
    labels = data.gallery_labels
    assert labels.shape == (20_000, PRESETS[preset].classes) and labels.dtype == torch.float32
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    per_item = labels.sum(1)
    assert per_item.min() >= 1  # every item has a label
    assert per_item.mean().item() == pytest.approx(mean_labels, abs=0.15)
    assert (per_item >= 3).float().mean() > 0.1  # and many have three or more
    frequency = labels.sum(0)
    assert frequency.min() > 0 and frequency.max() / frequency.min() > 10  # uneven classes, all present


def test_single_label_statistics():
    data = make_retrieval_set("nus-wide-single", dim=8, num_queries=30, gallery_size=20_000)
    labels = data.gallery_labels
    assert labels.shape == (20_000,) and labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() > 0 and counts.max() / counts.min() > 3
    expected = class_weights(PRESETS["nus-wide-single"], torch.device("cpu")) * 20_000
    torch.testing.assert_close(counts.float(), expected, rtol=0.1, atol=0)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("dim", [512, 2048])
def test_embeddings_have_class_structure(preset, dim):
    data = make_retrieval_set(preset, dim=dim, num_queries=200, gallery_size=1_500, seed=3)
    assert data.query.shape == (200, dim) and data.gallery.shape == (1_500, dim)
    assert data.query.dtype == torch.float32 and torch.isfinite(data.gallery).all()
    value = evaluate_map(data.query, data.query_labels, data.gallery, data.gallery_labels, backend="torch")
    shuffled = data.gallery_labels[torch.randperm(1_500, generator=torch.Generator().manual_seed(0))]
    chance = evaluate_map(data.query, data.query_labels, data.gallery, shuffled, backend="torch")
    # Retrieval works but is far from perfect, and it is the embeddings that carry it.
    assert 0.4 < value < 0.9 and value > chance + 0.15


def test_deterministic_per_seed_and_dtype():
    a = make_retrieval_set("mscoco", dim=16, num_queries=7, gallery_size=40, seed=5)
    b = make_retrieval_set("mscoco", dim=16, num_queries=7, gallery_size=40, seed=5)
    c = make_retrieval_set("mscoco", dim=16, num_queries=7, gallery_size=40, seed=6)
    assert torch.equal(a.gallery, b.gallery) and torch.equal(a.query_labels, b.query_labels)
    assert not torch.equal(a.gallery, c.gallery)
    half = make_retrieval_set("mscoco", dim=16, num_queries=7, gallery_size=40, seed=5, dtype=torch.float16)
    assert half.gallery.dtype == torch.float16 and torch.equal(half.gallery, a.gallery.half())


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown synthetic preset 'coco'; choose one of nus-wide"):
        make_retrieval_set("coco")
    with pytest.raises(ConfigError, match="must be positive"):
        make_retrieval_set("mscoco", num_queries=0)
