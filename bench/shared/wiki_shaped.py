"""Synthetic data of the Wikipedia benchmark's shape, for the whole-run benchmarks (bench/gpu/gpu_pipeline.py,
bench/cpu/train_cpu.py)."""
from __future__ import annotations

import numpy as np

from drcl_fast.data.container import MultiModalData, Split


def wiki_shaped(rows: tuple[int, int, int], widths: tuple[int, ...], classes: int, seed: int = 0) -> MultiModalData:
    """Two views of paired items: each class a random centre per view, each item its class's centre plus noise."""
    g = np.random.default_rng(seed)
    centres = [g.standard_normal((classes, w)) for w in widths]

    def split(n: int) -> Split:
        labels = g.integers(0, classes, n)
        features = [(c[labels] + 1.5 * g.standard_normal((n, c.shape[1]))).astype(np.float32) for c in centres]
        return Split(features, [labels.copy() for _ in widths])

    train, valid, test = (split(n) for n in rows)
    return MultiModalData("wiki", ["img", "txt"], train, valid, test)
