"""GPU suite section: exact top-k search, `topk(backend="triton")` against the reference on the same card.

Run by bench/gpu/gpu_suite.py (`--only gpu_search`). First correctness on the device:
exact-tie inputs (every cosine exact in any summation order) through the fused kernel
(k <= 128) and the sort path (k = 129, float64), which must give the reference's
indices and scores; then real-valued rows, where the kernel's own dot products may
differ from torch.mm's in the last bit (how many queries' top k change, and by how
much the scores do). Then timings at Q = 1,000, N = 1,000,000, D = 128, k = 10
against the float32 product alone and torch.topk over it (chunks of 250 queries),
with peak memory beyond the inputs. Without a GPU, `--smoke` runs every step at tiny
sizes on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch

from drcl_fast.retrieval import reference, topk
from gpu_map import exact_rows, peak_beyond
from gpu_timing import run_steps, timed

SECTION = "gpu_search"
CHUNK = 250  # queries per product chunk of the baselines


def check_exact(suite) -> None:
    generator = torch.Generator().manual_seed(0)
    num_queries, gallery_size = (5, 40) if suite.smoke else (300, 20_000)
    largest = 16 if suite.smoke else 128   # the fused kernel's largest k here (the interpreter sorts slowly)
    q, g = exact_rows(num_queries, 16, generator, suite.device), exact_rows(gallery_size, 16, generator, suite.device)
    beyond = exact_rows(max(gallery_size, 160), 16, generator, suite.device)   # k = 129: the sort path
    failures = []
    for gallery, k, dtype in [(g, 1, torch.float32), (g, 10, torch.float32), (g, largest, torch.float32),
                              (beyond, 129, torch.float32), (g, 10, torch.float64)]:
        found = topk(q.to(dtype), gallery.to(dtype), k, backend="triton")
        expected = topk(q.to(dtype), gallery.to(dtype), k, backend="torch")
        if not (torch.equal(found[1], expected[1]) and torch.equal(found[0], expected[0])):
            failures.append(f"k={k} {str(dtype)[6:]}")
    suite.add(SECTION, f"exact-tie inputs, Q={num_queries} N={gallery_size}, k=1/10/{largest}/129, "
                       f"float32 and float64 (k=10)",
              "indices and scores equal to the reference's" if not failures else f"differ: {', '.join(failures)}",
              "ok" if not failures else "FAIL: differs from the reference")


def reorderings(suite) -> None:
    """Real-valued rows: the fused kernel's scores against torch.mm's, k = 10."""
    generator = torch.Generator().manual_seed(1)
    num_queries, gallery_size, dim = (8, 64, 32) if suite.smoke else (1_000, 200_000, 128)
    q = torch.randn(num_queries, dim, generator=generator).to(suite.device)
    g = torch.randn(gallery_size, dim, generator=generator).to(suite.device)
    found, expected = topk(q, g, 10, backend="triton"), topk(q, g, 10, backend="torch")
    changed = (found[1] != expected[1]).any(1).sum().item()
    difference = (found[0] - expected[0]).abs().max().item()
    suite.add(SECTION, f"real-valued float32, Q={num_queries} N={gallery_size} D={dim}, k=10, triton vs reference",
              f"{changed} of {num_queries} queries' top 10 differ; max score difference {difference:.1e}",
              "fused tl.dot scores against torch.mm's")


def timings(suite) -> None:
    num_queries, gallery_size, dim, k = (16, 64, 32, 10) if suite.smoke else (1_000, 1_000_000, 128, 10)
    repeats = 1 if suite.smoke else 3
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(num_queries, dim, generator=generator).to(suite.device)
    g = torch.randn(gallery_size, dim, generator=generator).to(suite.device)
    unit_q, unit_g = reference.unit_rows(q, g)

    def product() -> None:
        for start in range(0, num_queries, CHUNK):
            unit_q[start:start + CHUNK] @ unit_g.T

    def plain_topk() -> None:
        for start in range(0, num_queries, CHUNK):
            torch.topk(unit_q[start:start + CHUNK] @ unit_g.T, k, dim=1)

    # Under the interpreter one call takes seconds: no warm-up there.
    t_fast, _ = timed(lambda: topk(q, g, k, backend="triton"), suite.device, repeats, warmup=not suite.smoke)
    t_ref, _ = timed(lambda: topk(q, g, k, backend="torch"), suite.device, 1, warmup=not suite.smoke)
    t_product, _ = timed(product, suite.device, repeats)
    t_plain, _ = timed(plain_topk, suite.device, repeats)
    flops = 2.0 * num_queries * gallery_size * dim
    memory = peak_beyond(lambda: topk(q, g, k, backend="triton"), suite.device)
    suite.add(SECTION, f"Q={num_queries} N={gallery_size} D={dim} k={k}",
              f"triton {t_fast * 1e3:.1f} ms ({t_fast / t_product:.3g}x the product), torch.topk over the product "
              f"{t_plain * 1e3:.1f} ms ({t_plain / t_product:.3g}x), topk torch {t_ref * 1e3:.1f} ms",
              f"product {t_product * 1e3:.1f} ms at {flops / t_product / 1e12:.3g} TFLOP/s (unit rows given; "
              f"topk normalises its inputs too); triton peak beyond inputs {memory}")


def run(suite) -> None:
    run_steps(suite, SECTION, (check_exact, reorderings, timings))
