"""Labels in the compact forms the fast backends compare: class codes or bitmasks.

Single-label: int64 codes that are equal exactly where the class ids are equal.
Multi-label: each row's 0/1 label vector packed into int64 words of 64 labels,
so relevance ("shares at least one label") is an AND and a test for non-zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BITS_PER_WORD = 64


@dataclass
class EncodedLabels:
    query: torch.Tensor  # (Q,) int64 codes, or (Q, W) int64 bitmasks
    gallery: torch.Tensor  # (N,) or (N, W), same form as query
    multilabel: bool


def pack_bits(labels: torch.Tensor) -> torch.Tensor:
    """(n, C) 0/1 matrix -> (n, ceil(C / 64)) int64 bitmasks; label c is bit c % 64 of word c // 64."""
    n, classes = labels.shape
    words = max(1, -(-classes // BITS_PER_WORD))
    bits = torch.zeros(n, words * BITS_PER_WORD, dtype=torch.int64, device=labels.device)
    bits[:, :classes] = (labels != 0).long()
    shifts = torch.arange(BITS_PER_WORD, device=labels.device)
    # Distinct powers of two never carry, so the int64 sum is the bitwise OR
    # (bit 63 wraps to the sign bit, which is what the C++ side reads as uint64).
    return (bits.view(n, words, BITS_PER_WORD) << shifts).sum(2)


def encode(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> EncodedLabels:
    """Codes or bitmasks of labels already checked by reference.check_inputs."""
    if query_labels.dim() == 2:
        return EncodedLabels(pack_bits(query_labels), pack_bits(gallery_labels), multilabel=True)
    # Ids may arrive as floats in one array and ints in the other: equal as float64
    # (exact for every integer id below 2**53) means equal codes.
    ids = torch.cat([query_labels.double(), gallery_labels.double()])
    codes = torch.unique(ids, return_inverse=True)[1]
    return EncodedLabels(codes[:len(query_labels)], codes[len(query_labels):], multilabel=False)
