"""A whole training run on the CPU: wall time, the matrix floor's fraction, MAP.

Three cases (issue 11's bars, and the bf16 precision's quality bars; docs/training.md has the figures):

- `demo`: the bundled mfeat data with the demo's preset (six views, H 1,024, D 512,
  batch 140, 40 epochs of SPL and of RSC);
- `wiki-sized`: two synthetic views of widths 128 and 10 (2,173 / 231 / 462 rows,
  10 classes), H 1,024, D 512, batch 1,024, 100 epochs, RSC rates 1e-4;
- `nus-like`: synthetic NUS-WIDE-like multi-label data (`nus_like` below): three views of
  widths 256, 128 and 64 (2,500 / 250 / 500 rows), 21 classes of Zipf-like frequency, 1 +
  Poisson(0.9) labels an item, 6 % of the items of every split with no label at all (the
  package leaves unlabelled train and valid rows out; MAP skips unlabelled queries);
  H 512, D 256, batch 256, 30 epochs, RSC rates 1e-4.

One `trainer.fit` per call (no checkpoints), start-up excluded, evaluation included.
To compare with another version, run this file with PYTHONPATH pointing at that
version's tree, alternating the two in one session (the machine's load drifts):

    OMP_NUM_THREADS=2 python bench/cpu/train_cpu.py demo --units 1
    OMP_NUM_THREADS=2 PYTHONPATH=/path/to/old/tree python bench/cpu/train_cpu.py demo --units default

`--precision bf16` runs the encoders' products in bf16 (drcl_fast.runtime.precision). Its speed needs a
CPU that multiplies bf16 natively (AVX512-BF16 or AMX); on one without, the script refuses it.
`--emulate-bf16` runs a bf16 run's numerics on any CPU at float32 speed, for the quality (MAP)
bars only: every bf16 matrix product (aten.mm / aten.addmm, default and out) is computed as the
float32 product of its bf16 operands (exact products, float32 sums) rounded to bf16, what a native
bf16 GEMM with float32 accumulation gives up to summation order. Its times (and floor line) say
nothing about bf16 speed. It first checks itself against torch's own bf16 product:

    OMP_NUM_THREADS=2 python bench/cpu/train_cpu.py nus-like --units 1 --precision fp32
    OMP_NUM_THREADS=2 python bench/cpu/train_cpu.py nus-like --emulate-bf16
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections import Counter
from typing import Iterator

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import repo_root  # noqa: F401 - bench.shared
from drcl_fast.config import DRCLConfig
from drcl_fast.data.container import MultiModalData, Split
from drcl_fast.training import trainer

WIKI_SIZED = {"rows": (2173, 231, 462), "widths": (128, 10), "classes": 10}
NUS_LIKE = {"rows": (2500, 250, 500), "widths": (256, 128, 64), "classes": 21, "extra_labels": 0.9,
            "zipf": 1.0, "unlabelled": 0.06, "noise": 1.5}
CASES = ("demo", "wiki-sized", "nus-like")


def nus_like(rows: tuple[int, int, int], widths: tuple[int, ...], classes: int, extra_labels: float, zipf: float,
             unlabelled: float, noise: float, seed: int = 0) -> MultiModalData:
    """Paired items of NUS-WIDE's label statistics (drcl_fast.data.synthetic's "nus-wide" preset: 21
    classes, class c drawn with weight (c + 1) ** -zipf, 1 + Poisson(extra_labels) distinct labels an
    item), a fraction `unlabelled` of every split's items with none; each view's features the
    normalised sum of the item's classes' centres (a random centre per class and view) plus noise
    (noise alone for an unlabelled item), so items sharing labels cluster in every view."""
    g = np.random.default_rng(seed)
    centres = [g.standard_normal((classes, w)) / np.sqrt(w) for w in widths]
    weights = (np.arange(classes) + 1.0) ** -zipf
    weights /= weights.sum()

    def split(n: int) -> Split:
        labels = np.zeros((n, classes), dtype=np.float32)
        counts = np.minimum(1 + g.poisson(extra_labels, n), 8)
        for i in range(n):
            labels[i, g.choice(classes, size=counts[i], replace=False, p=weights)] = 1
        labels[g.choice(n, size=round(unlabelled * n), replace=False)] = 0
        norms = np.maximum(labels.sum(axis=1, keepdims=True), 1)
        features = [(labels / np.sqrt(norms) @ c + noise * g.standard_normal((n, c.shape[1])) / np.sqrt(c.shape[1]))
                    .astype(np.float32) for c in centres]
        return Split(features, [labels.copy() for _ in widths])

    train, valid, test = (split(n) for n in rows)
    return MultiModalData("nus-like", ["img", "txt", "tag"], train, valid, test)


def case_data(case: str):
    """(data, config) of a case; the config's out is filled in by the caller."""
    if case == "demo":
        from drcl_fast.data.mfeat import load_mfeat
        return load_mfeat(), DRCLConfig.preset("mfeat")
    if case == "nus-like":
        return nus_like(**NUS_LIKE), DRCLConfig.preset("nus-like", hidden_shape=512, output_shape=256,
                                                       batch_size=256, epochs=30, lr=[1e-4] * 3)
    from bench.shared.wiki_shaped import wiki_shaped
    data = wiki_shaped(WIKI_SIZED["rows"], WIKI_SIZED["widths"], WIKI_SIZED["classes"])
    return data, DRCLConfig.preset("wiki", hidden_shape=1024, output_shape=512, batch_size=1024, epochs=100,
                                   lr=[1e-4, 1e-4])


# ---------------------------------------------------------------------------------------------------------------
# bf16 emulation (numerics only)

aten = torch.ops.aten
# The products a bf16 run makes on the CPU (EncoderStep: torch.mm/addmm with out=; Encoder.forward: F.linear,
# which reaches the dispatcher as addmm or mm), computed here in float32 from their bf16 operands.
EMULATED = {aten.mm.default, aten.mm.out, aten.addmm.default, aten.addmm.out}
# Other matrix products: none occurs in a bf16 run today; one with bf16 operands would run torch's own
# bf16 kernel, unemulated, so it stops the run instead.
OTHER_PRODUCTS = {getattr(aten, name) for name in ("bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot",
                                                    "matmul", "linear", "_addmm_activation", "addr", "outer")
                  if hasattr(aten, name)}


class BF16Emulation(TorchDispatchMode):
    """aten.mm / aten.addmm of bf16 operands as float32 products of those (exactly representable) values,
    the result rounded to bf16 (round to nearest even): a native bf16 GEMM with float32 accumulation, up
    to summation order. Counts what it computed (products, FLOP, per overload). Per thread, as every
    dispatch mode: products in other threads are not seen."""

    def __init__(self) -> None:
        super().__init__()
        self.products = 0
        self.flops = 0
        self.overloads: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in EMULATED:
            first, second = (args[0], args[1]) if func.overloadpacket is aten.mm else (args[1], args[2])
            if first.dtype == torch.bfloat16 and second.dtype == torch.bfloat16:
                return self._emulate(func, args, kwargs, first, second)
        elif func.overloadpacket in OTHER_PRODUCTS and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in (*args, *kwargs.values())):
            raise RuntimeError(f"--emulate-bf16: {func} with bf16 operands is not emulated; add it to EMULATED")
        return func(*args, **kwargs)

    def _emulate(self, func, args, kwargs, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        out = kwargs.get("out")
        if func.overloadpacket is aten.mm:
            exact = torch.mm(first.float(), second.float())
        else:
            bias = args[0]
            exact = torch.addmm(bias.float(), first.float(), second.float(),
                                beta=kwargs.get("beta", 1), alpha=kwargs.get("alpha", 1))
        rounded = exact.to(torch.bfloat16)
        self.products += 1
        self.flops += 2 * first.shape[0] * first.shape[1] * second.shape[1]
        self.overloads[str(func)] += 1
        if out is None:
            return rounded
        if out.shape != rounded.shape:
            out.resize_(rounded.shape)
        return out.copy_(rounded)


@contextlib.contextmanager
def emulated_bf16() -> Iterator[BF16Emulation]:
    """A bf16 run allowed on this CPU, its products emulated (BF16Emulation): the package's probe of native
    bf16 instructions answers "emulated", and the Python step runs instead of the C++ one (whose calls
    a Python dispatch mode may not see: it makes them with the GIL released). Units must train one at a
    time (concurrent_units=1): a dispatch mode is per thread."""
    from drcl_fast.runtime import precision
    from drcl_fast.training import encoder_step
    probe, step = precision.cpu_bf16_instructions, encoder_step._step_cpp
    precision.cpu_bf16_instructions = lambda: "emulated"
    encoder_step._step_cpp = None
    try:
        with BF16Emulation() as mode:
            yield mode
    finally:
        precision.cpu_bf16_instructions, encoder_step._step_cpp = probe, step


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance of two bf16 tensors in units in the last place (steps between representable values)."""
    def ordinal(t: torch.Tensor) -> torch.Tensor:
        bits = t.contiguous().view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)   # sign-magnitude to a monotone integer line
    return (ordinal(a) - ordinal(b)).abs()


def check_emulation(seed: int = 0) -> str:
    """The emulation against torch's own bf16 products (mm, addmm, and their out forms) of random 64 x 96 by
    96 x 80 operands: equal, or within one bf16 ulp elementwise; raises SystemExit otherwise, or if the
    mode did not compute them."""
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(*shape, generator=g).to(torch.bfloat16) for shape in ((64, 96), (96, 80)))
    bias = torch.randn(80, generator=g).to(torch.bfloat16)
    cases = {
        "mm": lambda: torch.mm(a, b),
        "mm out": lambda: torch.mm(a, b, out=torch.empty(64, 80, dtype=torch.bfloat16)),
        "addmm": lambda: torch.addmm(bias, a, b),
        "addmm out": lambda: torch.addmm(bias, a, b, out=torch.empty(64, 80, dtype=torch.bfloat16)),
        "addmm transposed": lambda: torch.addmm(bias, a, b.t().contiguous().t()),
    }
    words, worst = [], 0
    for name, product in cases.items():
        native = product()
        with BF16Emulation() as mode:
            emulated = product()
        if mode.products != 1 or emulated.dtype != torch.bfloat16:
            raise SystemExit(f"emulation check: {name} was not emulated ({mode.products} products intercepted)")
        ulps = bf16_ulps(native, emulated)
        worst = max(worst, int(ulps.max()))
        words.append(f"{name} {int((ulps == 0).sum())}/{ulps.numel()} equal, max {int(ulps.max())} ulp")
    line = (f"emulation check against torch's bf16 products (64x96 @ 96x80, bias 80): {'; '.join(words)}: "
            + ("ok" if worst <= 1 else "FAIL"))
    if worst > 1:
        raise SystemExit(line)
    return line


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--units", default="default",
                        help="concurrent_units: a number, 'auto', or 'default' (the version's own default; "
                             "the only choice for versions without the setting); 1 under --emulate-bf16")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the case's epochs")
    parser.add_argument("--label", default="", help="printed at the start of the result line")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="the run's precision (default fp32; bf16 needs AVX512-BF16 or AMX, or --emulate-bf16)")
    parser.add_argument("--emulate-bf16", action="store_true",
                        help="a bf16 run's numerics at float32 speed on any CPU (MAP only; its times mean nothing)")
    args = parser.parse_args()
    emulate = args.emulate_bf16
    if emulate and args.precision == "fp32":
        parser.error("--emulate-bf16 emulates a bf16 run: leave --precision out or give bf16")
    if emulate and args.units not in ("default", "1"):
        parser.error("--emulate-bf16 trains one unit at a time (a dispatch mode is per thread): leave --units "
                     "out or give 1")
    precision = "bf16" if emulate else args.precision or "fp32"
    if precision == "bf16" and not emulate:
        from drcl_fast.runtime.precision import cpu_bf16_instructions
        if cpu_bf16_instructions() is None:
            sys.exit("train_cpu.py: this CPU lacks AVX512-BF16/AMX (torch finds neither), and the bf16 speed bars "
                     "need a CPU with one; --emulate-bf16 measures a bf16 run's numerics (MAP) only")
    units = "1" if emulate else args.units
    if emulate:
        print(check_emulation(), flush=True)

    data, cfg = case_data(args.case)
    extra = {} if units == "default" else {"concurrent_units": units if units == "auto" else int(units)}
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    if args.precision is not None or emulate:   # versions without the setting take no precision
        extra["precision"] = precision
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, out=out, overwrite=True, checkpoint_every=0, quiet=True, **extra)
        with emulated_bf16() if emulate else contextlib.nullcontext() as mode:
            start = time.perf_counter()
            result = trainer.fit(data, cfg, progress=False)
            wall = time.perf_counter() - start
    if emulate:
        print(intercepted_line(mode, result), flush=True)
    floor = getattr(result, "floor", None)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in getattr(result, "phase_seconds", {}).items())  # none before
    what = ("bf16 emulated (MAP only: times and floor are float32 speed, not bf16's)" if emulate else precision)
    units_word = f"{units} (emulation: one at a time)" if emulate else units
    print(f"{args.label} {args.case} units={units_word}: {what}, {wall:.2f} s ({phases}); MAP@all "
          f"{result.metrics[0].mean:.5f}, MAP@50 {result.metrics[1].mean:.5f}"
          + (f"; {floor.line()}" if floor is not None else ""), flush=True)


def intercepted_line(mode: BF16Emulation, result) -> str:
    """What the emulation computed in the run; SystemExit if it computed nothing, or clearly less than the
    run's counted encoder products (the floor's FLOP: steps, projections, evaluation encodes)."""
    counted = getattr(result, "train_flops", 0) or 0
    overloads = ", ".join(f"{name} {n}" for name, n in sorted(mode.overloads.items()))
    line = (f"emulated bf16 products: {mode.products} ({overloads}), {mode.flops / 1e12:.3f} TFLOP; the run's "
            f"counted encoder products {counted / 1e12:.3f} TFLOP")
    if mode.products == 0 or mode.flops < 0.9 * counted:
        raise SystemExit(line + ": too few intercepted, the emulation missed products")
    return line


if __name__ == "__main__":
    main()
