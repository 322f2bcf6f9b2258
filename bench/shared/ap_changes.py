"""How far two computations of the same average precisions differ: queries reordered, and by how much.

On real-valued embeddings two computations of "the same" cosine can differ in the last bits and
swap near-ties; bench/cpu/map_precision.py compares backends and precisions on the CPU, the GPU
suite (bench/gpu/gpu_map.py) the Triton kernels against torch.mm.
"""
from __future__ import annotations

import torch

# Summing the same precisions in another order moves an AP by ~1e-15; a reordering by far more.
REORDERED = 1e-12


def compare(got: torch.Tensor, expected: torch.Tensor) -> str:
    """'share of queries whose AP moved by more than REORDERED | largest AP difference | MAP difference';
    NaN APs (queries with nothing relevant, left out of the MAP) count as unchanged."""
    changed = (got - expected).nan_to_num().abs()
    counted = ~torch.isnan(expected)
    d_map = got[counted].mean().item() - expected[counted].mean().item()
    return f"{(changed > REORDERED).float().mean().item():.2%} | {changed.max().item():.1e} | {d_map:+.1e}"
