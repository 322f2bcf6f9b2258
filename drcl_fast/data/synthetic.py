"""Synthetic stand-ins for NUS-WIDE and MS-COCO retrieval, at their real sizes.

The real embeddings cannot be downloaded here; speed runs and tests need their
shapes and label statistics, and rankings with structure. Each item gets labels
drawn from uneven (Zipf-like) class frequencies — one per item for single-label
data, 1 + Poisson(extra) distinct ones for multi-label data — and an embedding
at the normalised sum of its classes' centres plus Gaussian noise, so items
that share labels cluster and retrieval is neither trivial nor random. The noise
lives in a fixed low-dimensional subspace, as nuisance factors of real features
do, which keeps the difficulty (and MAP) about the same at any D. Queries and
gallery ("two modalities") get different noise levels.

    data = make_retrieval_set("nus-wide", dim=2048, device="cuda")
    evaluate_map(data.query, data.query_labels, data.gallery, data.gallery_labels)

Deterministic for a given (preset, sizes, dim, seed, device).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from drcl_fast.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    classes: int
    multilabel: bool
    num_queries: int
    gallery_size: int
    extra_labels: float  # mean labels per item beyond the first (multi-label)
    zipf: float  # class c is drawn with weight (c + 1) ** -zipf


# Sizes of the usual retrieval splits; label counts per item near the real data's
# (about 2 of 21 for NUS-WIDE, about 3 of 80 for MS-COCO).
PRESETS = {
    "nus-wide": Preset(classes=21, multilabel=True, num_queries=2_100, gallery_size=193_734,
                       extra_labels=0.9, zipf=1.0),
    "nus-wide-single": Preset(classes=10, multilabel=False, num_queries=23_700, gallery_size=23_700,
                              extra_labels=0.0, zipf=0.8),
    "mscoco": Preset(classes=80, multilabel=True, num_queries=5_000, gallery_size=117_218,
                     extra_labels=1.9, zipf=0.9),
}

_NOISE = {"query": 1.6, "gallery": 1.3}  # norm of the noise, per unit of class signal
_NOISE_RANK = 16
_ROWS_PER_STEP = 16_384  # bounds the temporaries while generating large galleries


@dataclass
class RetrievalSet:
    name: str
    query: torch.Tensor  # (Q, D)
    query_labels: torch.Tensor  # (Q,) int64 class ids, or (Q, C) float32 0/1
    gallery: torch.Tensor  # (N, D)
    gallery_labels: torch.Tensor


def class_weights(preset: Preset, device: torch.device) -> torch.Tensor:
    weights = torch.arange(1, preset.classes + 1, dtype=torch.float64, device=device) ** -preset.zipf
    return (weights / weights.sum()).float()


def _labels(preset: Preset, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    weights = class_weights(preset, device)
    if not preset.multilabel:
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    extra = torch.poisson(torch.full((n,), preset.extra_labels, device=device), generator=generator)
    most = min(preset.classes, 8)
    counts = (1 + extra).clamp(max=most).long()
    picks = torch.multinomial(weights.expand(n, -1), most, replacement=False, generator=generator)
    labels = torch.zeros(n, preset.classes, device=device)
    labels.scatter_(1, picks, (torch.arange(most, device=device) < counts[:, None]).float())
    return labels


def _embeddings(labels: torch.Tensor, centres: torch.Tensor, basis: torch.Tensor, noise: float,
                generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    n, dim = labels.shape[0], centres.shape[1]
    out = torch.empty(n, dim, dtype=dtype, device=centres.device)
    scale = noise / basis.shape[0] ** 0.5
    for start in range(0, n, _ROWS_PER_STEP):
        rows = labels[start:start + _ROWS_PER_STEP]
        if rows.dim() == 1:
            signal = centres[rows]
        else:
            signal = torch.nn.functional.normalize(rows @ centres, dim=1)
        jitter = torch.randn(len(rows), basis.shape[0], generator=generator, device=centres.device) @ basis
        out[start:start + len(rows)] = (signal + scale * jitter).to(dtype)
    return out


def make_retrieval_set(preset: str, dim: int = 512, *, num_queries: int | None = None,
                       gallery_size: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> RetrievalSet:
    """Queries and gallery shaped like `preset` (see PRESETS), optionally resized."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    num_queries = spec.num_queries if num_queries is None else num_queries
    gallery_size = spec.gallery_size if gallery_size is None else gallery_size
    if min(num_queries, gallery_size, dim) < 1:
        raise ConfigError(f"num_queries, gallery_size and dim must be positive, got "
                          f"{num_queries}, {gallery_size}, {dim}")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    centres = torch.nn.functional.normalize(
        torch.randn(spec.classes, dim, generator=generator, device=device), dim=1)
    # Orthonormal rows spanning the noise subspace.
    basis = torch.linalg.qr(torch.randn(dim, min(_NOISE_RANK, dim), generator=generator, device=device))[0].T
    query_labels = _labels(spec, num_queries, generator, device)
    gallery_labels = _labels(spec, gallery_size, generator, device)
    return RetrievalSet(
        name=preset,
        query=_embeddings(query_labels, centres, basis, _NOISE["query"], generator, dtype),
        query_labels=query_labels,
        gallery=_embeddings(gallery_labels, centres, basis, _NOISE["gallery"], generator, dtype),
        gallery_labels=gallery_labels)
