"""Which RSC rate should data without published rates get? One rate for every modality against `--lr auto`.

    OMP_NUM_THREADS=2 python bench/cpu/lr_default.py              # four data sets (minutes each on 2 cores)
    OMP_NUM_THREADS=2 python bench/cpu/lr_default.py --only mfeat
    OMP_NUM_THREADS=2 python bench/cpu/lr_default.py --smoke      # tiny sizes, seconds

For each data set: one rate for every modality (1e-4 … 1e-2), the released default list
where the data has at most five views (what such data trained with before), and `--lr
auto` (val_loss). SPL runs once per data set; every run then trains RSC from that prior,
so the rows differ by the RSC rates only. Prints a markdown table: MAP@all, MAP@50, the
RSC phase's wall time and its ratio to the 1e-3 run's, the rates used (auto: the chosen
ones). The data sets:

- mfeat: the bundled digits at the demo preset (six views, standardised at load time);
- digits-raw: the same six views as a user's .npz container (`--data_path`), not
  standardised (column scales from 1 to the thousands), at the same sizes. SPL diverges
  on it (J_L NaN on the morphological view at epoch 12 with the released --lr_SPL 5e-4),
  so its runs train RSC against the random orthogonal prior W0 (`--prior w0`);
- synthml: bench/cpu/lr_auto.py's synthetic multi-label data (two views, 12 classes);
- wide: two wide non-negative views (4,096 and 300 columns, 10 classes): ReLU of a class
  centre plus noise, the centres about 5.7 noise standard deviations apart, the shape of
  CNN image and text features.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from drcl_fast import outputs
from drcl_fast.config import RELEASED_LR, DRCLConfig
from drcl_fast.data import load_dataset, load_mfeat, save_generic
from drcl_fast.data.container import SPLITS, MultiModalData, Split
from drcl_fast.data.mfeat import VIEWS
from drcl_fast.errors import NonFiniteLossError
from drcl_fast.training.trainer import fit, output_dim
from lr_auto import multilabel_views

RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
MFEAT_SIZES = dict(epochs=40, batch_size=140, output_shape=512, hidden_shape=1024)
SMALL = dict(epochs=40, hidden_shape=512, output_shape=128, batch_size=128)
SMOKE = dict(epochs=4, hidden_shape=32, output_shape=16, batch_size=200)


def raw_digits(folder: Path) -> MultiModalData:
    """mfeat's six views without standardisation, saved as a generic .npz container and read back."""
    asset = resources.files("drcl_fast.data") / "assets" / "mfeat.npz"
    with asset.open("rb") as fh, np.load(fh) as npz:
        labels, rows = npz["labels"], {s: npz[f"split_{s}"] for s in SPLITS}
        views = [npz[f"x_{v}"].astype(np.float32) for v in VIEWS]
    splits = {s: Split([x[rows[s]] for x in views], [labels[rows[s]] for _ in views]) for s in SPLITS}
    path = folder / "digits-raw.npz"
    save_generic(path, MultiModalData("digits-raw", list(VIEWS), **splits))
    return load_dataset("digits-raw", path=path)


def wide(rows=(2000, 300, 500), widths=(4096, 300), classes=10, seed=0) -> MultiModalData:
    g = np.random.default_rng(seed)
    centres = [6.0 / np.sqrt(w) * g.standard_normal((classes, w)) for w in widths]   # centres 5.7 noise sd apart

    def split(n: int) -> Split:
        y = g.integers(0, classes, n)
        x = [np.maximum(c[y] + 1.5 * g.standard_normal((n, c.shape[1])), 0).astype(np.float32) for c in centres]
        return Split(x, [y.copy() for _ in widths])

    return MultiModalData("wide", ["img", "txt"], *(split(n) for n in rows))


def cases(folder: Path) -> dict:
    return {"mfeat": (load_mfeat, MFEAT_SIZES),
            "digits-raw": (lambda: raw_digits(folder), {**MFEAT_SIZES, "prior": "w0"}),
            "synthml": (lambda: multilabel_views((2000, 300, 500), (256, 64), 12), SMALL),
            "wide": (wide, SMALL)}


def one_run(data: MultiModalData, sizes: dict, lr, root: Path, prior: Path | None) -> tuple[dict, Path | None]:
    out = Path(tempfile.mkdtemp(dir=root))
    sizes = {"prior": str(prior) if prior else "spl", **sizes}   # a case's own prior (w0) stays
    cfg = DRCLConfig.preset(data.name, out=str(out), quiet=True, checkpoint_every=0, device="cpu", lr=lr,
                            **sizes)
    try:
        r = fit(data, cfg, progress=False)
    except NonFiniteLossError as error:   # a rate too large for some modality: a result too
        shutil.rmtree(out)
        return {"diverged": str(error).split(";")[0]}, prior
    rates = [r.lr_search[k]["chosen"] if k in r.lr_search else x
             for k, x in enumerate(cfg.learning_rates(data.num_modalities))]
    extended = sorted({x for s in r.lr_search.values() for x in s["extended"]})
    kept = root / f"{data.name}.prior.mat" if cfg.prior == "spl" or prior else None
    if prior is None and kept is not None:
        shutil.copy(outputs.prior_path(out, data.name, output_dim(cfg, data), data.num_classes), kept)
    shutil.rmtree(out)
    return {"map_all": r.metrics[0].mean, "map_50": r.metrics[1].mean, "rsc": r.phase_seconds["rsc"],
            "rates": rates, "extended": extended}, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="+", default=None, help="the data sets to run (default: all)")
    parser.add_argument("--rates", nargs="+", type=float, default=RATES, help="the single rates to try (1e-3 "
                        "always runs, first: the others' time is compared with its)")
    parser.add_argument("--no_header", action="store_true")
    args = parser.parse_args(argv)
    if not args.no_header:
        print("| data | rates | MAP@all | MAP@50 | RSC time | vs 1e-3 | rates used |")
        print("|---|---|---:|---:|---:|---:|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (load, sizes) in cases(root).items():
            if args.only and name not in args.only:
                continue
            data = load()
            sizes = {**sizes, **SMOKE} if args.smoke else sizes
            settings = {f"{x:g} for all": x for x in sorted({1e-3, *args.rates})}
            if data.num_modalities <= len(RELEASED_LR):
                settings["released list"] = list(RELEASED_LR[:data.num_modalities])
            settings["auto (val_loss)"] = "auto"
            prior, base = None, None
            for label in ["0.001 for all", *(s for s in settings if s != "0.001 for all")]:
                r, prior = one_run(data, sizes, settings[label], root, prior)
                if "diverged" in r:
                    print(f"| {name} | {label} | diverged | | | | {r['diverged']} |", flush=True)
                    continue
                base = base or r["rsc"]
                note = f"; range extended to {', '.join(f'{x:g}' for x in r['extended'])}" if r["extended"] else ""
                print(f"| {name} | {label} | {r['map_all']:.4f} | {r['map_50']:.4f} | {r['rsc']:.1f} s | "
                      f"{r['rsc'] / base:.2f}x | {', '.join(f'{x:g}' for x in r['rates'])}{note} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
