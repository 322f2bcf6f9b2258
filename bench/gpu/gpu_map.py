"""GPU suite section: MAP evaluation, the `triton` backend against the reference on the same card.

Run by bench/gpu/gpu_suite.py (`--only gpu_map`). First correctness on the device
(exact-tie inputs, every path, against the reference), then how often
real-valued and fp16/bf16 inputs reorder items and what that does to MAP, then
timings at NUS-WIDE and MS-COCO scale (D = 2048) against the reference and the
floor (the float32 similarity product at this card's measured rate plus one
sort of the scores), with peak memory beyond the inputs. Without a GPU,
`--smoke` runs every step at tiny sizes on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bench.shared.ap_changes import compare
from drcl_fast.data.synthetic import make_retrieval_set
from drcl_fast.kernels import map_topk
from drcl_fast.retrieval import reference
from drcl_fast.retrieval import triton as triton_backend
from gpu_timing import peak_bytes, run_steps, timed

SECTION = "gpu_map"
# (preset, dim, k) timed at full size; the smoke run shrinks them.
TIMED = [("nus-wide", 2048, None), ("nus-wide", 2048, 50), ("nus-wide", 512, None),
         ("mscoco", 2048, None), ("mscoco", 2048, 50), ("nus-wide-single", 2048, None)]


def peak_beyond(fn: Callable[[], Any], device: str) -> str:
    peak = peak_bytes(fn, device)
    return "n/a on the CPU" if peak is None else f"{peak / 2**30:.2f} GiB"


def mean_ap(ap: torch.Tensor) -> float:  # evaluate_map's mean: left-out (NaN) queries do not count
    counted = ap[~torch.isnan(ap)]
    return float(counted.mean()) if counted.numel() else 0.0


def exact_rows(n: int, dim: int, generator: torch.Generator, device: str) -> torch.Tensor:
    """+-1 * 2**j entries: every cosine is exact in any summation order, and ties abound."""
    signs = torch.randint(0, 2, (n, dim), generator=generator).float() * 2 - 1
    return (signs[:, :4].repeat(1, dim // 4) * 2.0 ** torch.randint(-3, 4, (n, 1), generator=generator)).to(device)


def check_exact(suite) -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = (12, 40) if suite.smoke else (300, 5_000)
    worst = 0.0
    for classes, multilabel in [(10, False), (21, True), (80, True)]:
        q, g = exact_rows(sizes[0], 16, generator, suite.device), exact_rows(sizes[1], 16, generator, suite.device)
        if multilabel:
            yq = (torch.rand(sizes[0], classes, generator=generator) < 3 / classes).float().to(suite.device)
            yg = (torch.rand(sizes[1], classes, generator=generator) < 3 / classes).float().to(suite.device)
        else:
            yq = torch.randint(0, classes, (sizes[0],), generator=generator).to(suite.device)
            yg = torch.randint(0, classes, (sizes[1],), generator=generator).to(suite.device)
        for k in [None, 1, 50, 129]:  # sort path, fused top-k (twice), sort path for a large k
            expected = reference.average_precisions(q, yq, g, yg, k=k)
            got = triton_backend.average_precisions(q, yq, g, yg, k=k)
            same_nan = torch.equal(torch.isnan(got), torch.isnan(expected))
            difference = (got - expected).nan_to_num().abs().max().item()
            worst = max(worst, difference if same_nan else float("inf"))
    suite.add(SECTION, f"exact-tie inputs, Q={sizes[0]} N={sizes[1]}, 10/21/80 labels, k=all/1/50/129",
              f"max AP difference from the reference {worst:.1e}", "ok" if worst <= 1e-9 else "FAIL: differs from the reference")


def reorderings(suite) -> None:
    """Real-valued inputs: fused-kernel scores vs torch.mm scores, and fp16/bf16 embeddings vs float32."""
    sizes = dict(num_queries=16, gallery_size=64) if suite.smoke else dict(num_queries=2_100, gallery_size=50_000)
    data = make_retrieval_set("nus-wide", 64 if suite.smoke else 2048, seed=1, device=suite.device, **sizes)
    args = (data.query, data.query_labels, data.gallery, data.gallery_labels)
    columns = "queries reordered, max AP difference, MAP difference"
    for k in [50, None]:
        expected = reference.average_precisions(*args, k=k)
        got = triton_backend.average_precisions(*args, k=k)
        fused = (k or sizes["gallery_size"]) <= map_topk.LARGEST_K
        suite.add(SECTION, f"real-valued float32, nus-wide Q={sizes['num_queries']} N={sizes['gallery_size']}, "
                           f"MAP@{k or 'all'}, triton vs reference",
                  compare(got, expected).replace(" |", ","),
                  f"{columns}; {'fused tl.dot scores' if fused else 'torch.mm scores, as the reference'}")
        for dtype in (torch.float16, torch.bfloat16):
            low = reference.average_precisions(data.query.to(dtype), data.query_labels, data.gallery.to(dtype),
                                               data.gallery_labels, k=k)
            suite.add(SECTION, f"{str(dtype)[6:]} embeddings vs float32, MAP@{k or 'all'}",
                      compare(low, expected).replace(" |", ","), columns)


def floor_time(data, device: str, repeats: int) -> tuple[float, float, float]:
    """(product seconds, its TFLOP/s, one sort pass seconds) over the whole score matrix,
    in chunks of at most 2 GiB of scores."""
    q, g = reference.unit_rows(data.query, data.gallery)
    step = reference.auto_chunk_size(q.shape[0], g.shape[0], 2**31, 4)

    def products() -> None:
        for start in range(0, q.shape[0], step):
            q[start:start + step] @ g.T
    product, _ = timed(products, device, repeats)
    scores = q[:step] @ g.T
    one_sort, _ = timed(lambda: torch.sort(scores, dim=1, descending=True), device, repeats)
    chunks = -(-q.shape[0] // step)
    flops = 2.0 * q.shape[0] * g.shape[0] * q.shape[1]
    return product, flops / product / 1e12, one_sort * chunks


def timings(suite) -> None:
    repeats = 1 if suite.smoke else 3
    for preset, dim, k in TIMED:
        sizes = dict(num_queries=16, gallery_size=24) if suite.smoke else {}
        data = make_retrieval_set(preset, 32 if suite.smoke else dim, seed=2, device=suite.device, **sizes)
        args = (data.query, data.query_labels, data.gallery, data.gallery_labels)
        shape = f"{preset} Q={data.query.shape[0]} N={data.gallery.shape[0]} D={data.query.shape[1]}"
        # Under the interpreter one call takes seconds: no warm-up there.
        t_fast, ap_fast = timed(lambda: triton_backend.average_precisions(*args, k=k), suite.device, repeats,
                                warmup=not suite.smoke)
        # One run: the reference takes seconds at this scale, and the calls above warmed cuBLAS and the sort.
        t_ref, ap_ref = timed(lambda: reference.average_precisions(*args, k=k), suite.device, 1, warmup=False)
        t_mm, tflops, t_sort = floor_time(data, suite.device, repeats)
        floor = t_mm + (t_sort if k is None else 0.0)
        memory = peak_beyond(lambda: triton_backend.average_precisions(*args, k=k), suite.device)
        difference = abs(mean_ap(ap_fast) - mean_ap(ap_ref))
        suite.add(SECTION, f"{shape} MAP@{k or 'all'}",
                  f"triton {t_fast * 1e3:.1f} ms, reference {t_ref * 1e3:.1f} ms ({t_ref / t_fast:.3g}x faster), "
                  f"floor {floor * 1e3:.1f} ms (triton takes {t_fast / floor:.3g}x)",
                  f"product {t_mm * 1e3:.1f} ms at {tflops:.3g} TFLOP/s"
                  + (f" + sort {t_sort * 1e3:.1f} ms" if k is None else "")
                  + f"; peak beyond inputs {memory}; MAP difference {difference:.1e}")
        if (preset, dim, k) == TIMED[0]:
            t_compiled, ap_compiled = timed(compiled_reference(args, k), suite.device, 1)
            suite.add(SECTION, f"{shape} MAP@{k or 'all'}, torch.compile(reference) per chunk",
                      f"{t_compiled * 1e3:.1f} ms (triton {t_compiled / t_fast:.3g}x faster)",
                      f"MAP difference {abs(mean_ap(ap_compiled) - mean_ap(ap_ref)):.1e}")
        del data, args


def compiled_reference(args: tuple, k: int | None) -> Callable[[], torch.Tensor]:
    """The reference's chunk loop with its ranking and AP step compiled."""
    rank = torch.compile(reference.average_precisions_from_scores, dynamic=False)
    q, yq, g, yg = reference.check_inputs(*args)
    q, g = reference.unit_rows(q, g)
    step = reference.auto_chunk_size(q.shape[0], g.shape[0])
    return lambda: torch.cat([rank(q[s:s + step] @ g.T, reference.relevance(yq[s:s + step], yg), k, yq.dim() == 2)
                              for s in range(0, q.shape[0], step)])


def run(suite) -> None:
    run_steps(suite, SECTION, (check_exact, reorderings, timings))
