"""`--lr auto` against hand-chosen rates: MAP@all and time, same seed, on two datasets.

    OMP_NUM_THREADS=2 python bench/cpu/lr_auto.py            # the bundled data (demo preset) and synthetic multi-label
    OMP_NUM_THREADS=2 python bench/cpu/lr_auto.py --smoke    # tiny sizes, seconds

For each dataset: the hand-chosen rates (the mfeat preset's 1e-3 per view; for the
synthetic data the released default list), then `--lr auto` with each criterion
(val_loss, val_map). Prints a markdown table: MAP@all, MAP@50, the RSC phase's wall
time and its ratio to the hand-chosen run's, the rates each run used.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from drcl_fast.config import DRCLConfig
from drcl_fast.data import load_mfeat
from drcl_fast.data.container import MultiModalData, Split
from drcl_fast.training.trainer import fit


def multilabel_views(rows: tuple[int, int, int], widths: tuple[int, ...], classes: int, seed: int = 0
                     ) -> MultiModalData:
    """Paired items with 1 + Poisson(1) distinct labels of uneven frequency; each view's features are the
    sum of its classes' centres (a random centre per class and view) plus noise, so items sharing labels
    cluster in every view."""
    g = np.random.default_rng(seed)
    centres = [g.standard_normal((classes, w)) for w in widths]
    weights = (np.arange(classes) + 1.0) ** -0.7
    weights /= weights.sum()

    def split(n: int) -> Split:
        labels = np.zeros((n, classes), dtype=np.float32)
        for i in range(n):
            labels[i, g.choice(classes, size=min(classes, 1 + g.poisson(1.0)), replace=False, p=weights)] = 1
        features = [(labels @ c + 2.0 * g.standard_normal((n, c.shape[1]))).astype(np.float32) for c in centres]
        return Split(features, [labels.copy() for _ in widths])

    train, valid, test = (split(n) for n in rows)
    return MultiModalData("synthml", ["img", "txt"], train, valid, test)


CASES = {
    "mfeat": (lambda: load_mfeat(), dict(), None),
    "synthetic multi-label": (lambda: multilabel_views((2000, 300, 500), (256, 64), 12),
                              dict(epochs=40, hidden_shape=512, output_shape=128, batch_size=128), [6e-6, 5e-3]),
}
SMOKE = dict(epochs=4, hidden_shape=32, output_shape=16, batch_size=200)


def one_run(data: MultiModalData, overrides: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = DRCLConfig.preset(data.name, out=out, quiet=True, checkpoint_every=0, device="cpu", **overrides)
        start = time.perf_counter()
        r = fit(data, cfg, progress=False)
        rates = [r.lr_search[k]["chosen"] if k in r.lr_search else lr
                 for k, lr in enumerate(cfg.learning_rates(data.num_modalities))]
        return {"map_all": r.metrics[0].mean, "map_50": r.metrics[1].mean, "rsc": r.phase_seconds["rsc"],
                "total": time.perf_counter() - start, "rates": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    print("| data | rates | MAP@all | MAP@50 | RSC time | vs hand-chosen | total | rates used |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, (load, overrides, hand) in CASES.items():
        data = load()
        if args.smoke:
            overrides = {**overrides, **SMOKE}
        base = {**overrides, **({"lr": hand} if hand else {})}
        runs = {"hand-chosen": one_run(data, base)}
        for criterion in ("val_loss", "val_map"):
            runs[f"auto, {criterion}"] = one_run(data, {**overrides, "lr": "auto", "lr_criterion": criterion})
        for label, r in runs.items():
            print(f"| {name} | {label} | {r['map_all']:.4f} | {r['map_50']:.4f} | {r['rsc']:.1f} s | "
                  f"{r['rsc'] / runs['hand-chosen']['rsc']:.2f}x | {r['total']:.1f} s | "
                  f"{', '.join(f'{lr:g}' for lr in r['rates'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
