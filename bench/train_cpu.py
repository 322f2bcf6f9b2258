"""A whole training run on the CPU: wall time, the matrix floor's fraction, MAP.

Two cases of issue 11's bars (docs/training.md has the figures):

- `demo`: the bundled mfeat data with the demo's preset (six views, H 1,024, D 512,
  batch 140, 40 epochs of SPL and of RSC);
- `wiki-sized`: two synthetic views of widths 128 and 10 (2,173 / 231 / 462 rows,
  10 classes), H 1,024, D 512, batch 1,024, 100 epochs, RSC rates 1e-4.

One `trainer.fit` per call (no checkpoints), start-up excluded, evaluation included.
To compare with another version, run this file with PYTHONPATH pointing at that
version's tree, alternating the two in one session (the machine's load drifts):

    OMP_NUM_THREADS=2 python bench/train_cpu.py demo --units 1
    OMP_NUM_THREADS=2 PYTHONPATH=/path/to/old/tree python bench/train_cpu.py demo --units default
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drcl_fast import trainer  # noqa: E402
from drcl_fast.config import DRCLConfig  # noqa: E402

WIKI_SIZED = {"rows": (2173, 231, 462), "widths": (128, 10), "classes": 10}


def case_data(case: str):
    """(data, config) of a case; the config's out is filled in by the caller."""
    if case == "demo":
        from drcl_fast.data.mfeat import load_mfeat
        return load_mfeat(), DRCLConfig.preset("mfeat")
    from wiki_shaped import wiki_shaped
    data = wiki_shaped(WIKI_SIZED["rows"], WIKI_SIZED["widths"], WIKI_SIZED["classes"])
    return data, DRCLConfig.preset("wiki", hidden_shape=1024, output_shape=512, batch_size=1024, epochs=100,
                                   lr=[1e-4, 1e-4])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=("demo", "wiki-sized"))
    parser.add_argument("--units", default="default",
                        help="concurrent_units: a number, 'auto', or 'default' (the version's own default; "
                             "the only choice for versions without the setting)")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the case's epochs")
    parser.add_argument("--label", default="", help="printed at the start of the result line")
    args = parser.parse_args()
    data, cfg = case_data(args.case)
    extra = {} if args.units == "default" else {"concurrent_units": args.units if args.units == "auto"
                                                else int(args.units)}
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, out=out, overwrite=True, checkpoint_every=0, quiet=True, **extra)
        start = time.perf_counter()
        result = trainer.fit(data, cfg, progress=False)
        wall = time.perf_counter() - start
    floor = getattr(result, "floor", None)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in getattr(result, "phase_seconds", {}).items())  # none before
    print(f"{args.label} {args.case} units={args.units}: {wall:.2f} s ({phases}); MAP@all "
          f"{result.metrics[0].mean:.5f}, MAP@50 {result.metrics[1].mean:.5f}"
          + (f"; {floor.line()}" if floor is not None else ""), flush=True)


if __name__ == "__main__":
    main()
