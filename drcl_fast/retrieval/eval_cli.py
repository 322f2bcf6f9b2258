"""`drcl-fast eval`: MAP of saved embeddings, every direction, as training reports it, and other metrics.

    drcl-fast eval --features_dir features --datasets wiki          # wiki_0.mat, wiki_1.mat, ...
    drcl-fast eval --files img.npz txt.pt --names image text --out runs/x --pr_plot runs/x/pr.png
    drcl-fast eval --files img.npz txt.npz --metrics map@all p@10 ndcg@10 rsum   # metrics.py's names
    torchrun --nproc_per_node 2 -m drcl_fast eval --files img.npz txt.pt --shard_gallery   # over 2 ranks

Files hold one modality's test embeddings and labels: the released
features/{dataset}_{k}.mat (keys test_fea, test_lab), or .npz / .mat / .pt
(a dict) with those keys or `embeddings` and `labels`. Labels are class ids or a
0/1 matrix (multi-label rules).
"""
from __future__ import annotations

import argparse
import itertools
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drcl_fast.data.generic import ArrayFile
from drcl_fast.errors import ConfigError, DataError
from drcl_fast.outputs import metrics_path, refuse_overwrite, save_json
from drcl_fast.retrieval import evaluate_directions
from drcl_fast.retrieval.metrics import (DEFAULT_METRICS, METRIC_FORMS, MetricSpec, check_paired, evaluate_metrics,
                                         parse_metrics)
from drcl_fast.retrieval.pr import plot_curves, precision_recall, save_curves_csv
from drcl_fast.retrieval.report import DirectionResult, format_table, metrics_dict, result_line
from drcl_fast.runtime import backends, distributed

SUFFIXES = (".mat", ".npz", ".pt")
KEYS = (("test_fea", "test_lab"), ("embeddings", "labels"))
# How to write each file type so that load_embeddings reads it: the advice of every read error.
REWRITE = {".pt": "torch.save({'embeddings': x, 'labels': y}, file), x and y tensors",
           ".npz": "numpy.savez(file, embeddings=x, labels=y), x and y numeric arrays",
           ".mat": "scipy.io.savemat(file, {'embeddings': x, 'labels': y}), x and y numeric arrays"}


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("embeddings (one file per modality)")
    source.add_argument("--features_dir", "--features-dir", default="features",
                        help="folder of {dataset}_{k}.mat|.npz|.pt files, k = 0, 1, ... (default: features)")
    source.add_argument("--datasets", default=None,
                        help="the dataset name in those file names (default: wiki); also names the modalities")
    source.add_argument("--files", nargs="+", metavar="FILE", help="these files instead, one per modality, in order")
    source.add_argument("--names", nargs="+", metavar="NAME",
                        help="modality names for the directions (default: the dataset's, else 0, 1, ...)")
    run = parser.add_argument_group("evaluation")
    run.add_argument("--k", nargs="+", default=None, metavar="K",
                     help="MAP cutoffs: 'all' and/or positive ints (default: all 50); short for "
                          "--metrics map@K ...")
    run.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                     help=f"what to report, each for every direction: {METRIC_FORMS}; ir@K and rsum need "
                          f"paired files (docs/metrics.md) (default: {' '.join(DEFAULT_METRICS)})")
    run.add_argument("--backend", **backends.flag_options())
    run.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    run.add_argument("--shard_gallery", "--shard-gallery", action="store_true",
                     help="under torchrun: each rank ranks only its slice of every gallery (default: each "
                          "rank takes a slice of the queries); the result is the single-process one, and in "
                          "one process the flag changes nothing")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="write metrics.json (training's schema) into this folder")
    out.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json / PR files")
    out.add_argument("--pr_plot", "--pr-plot", default=None, metavar="PNG",
                     help="precision-recall curves of every direction: this PNG, and the data as the same name .csv")
    out.add_argument("--quiet", action="store_true", help="print only the result lines")


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, d) and labels ((n,) class ids or (n, C) 0/1) of one modality's file."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        features, labels = _read_pair(path, suffix)
    except DataError as error:
        raise DataError(f"{error}; write the file again with {REWRITE[suffix]}") from error
    # .mat files store a vector of n class ids as a 1 x n (or n x 1) matrix.
    is_vector = labels.ndim == 2 and 1 in labels.shape and labels.size == len(features)
    return features, labels.reshape(-1) if is_vector else labels


def _read_pair(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """The file's (features, labels) as numeric arrays; DataError for anything else it holds."""
    with (nullcontext(_torch_dict(path)) if suffix == ".pt" else ArrayFile(path)) as arrays:
        keys = [str(key) for key in arrays.keys()]
        for features_key, labels_key in KEYS:
            if features_key in keys and labels_key in keys:
                features = _numeric(arrays[features_key], path, features_key)
                if features.ndim != 2:
                    raise DataError(f"{path}: {features_key!r} has shape {features.shape}; "
                                    f"expected (n, d), one embedding per row")
                return features, _numeric(arrays[labels_key], path, labels_key)
    shown = sorted(k for k in keys if not k.startswith("__"))
    raise DataError(f"{path} has keys {shown}; expected test_fea and test_lab (the released layout) "
                    f"or embeddings and labels")


def _torch_dict(path: Path) -> dict:
    """A .pt file's dict, loaded with weights_only=True: tensors and plain values, never code."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file (EOFError, RuntimeError, ...)
        raise DataError(f"{path} cannot be read as a .pt file of tensors ({_first_sentence(error)}): it is "
                        f"damaged, or it holds Python objects, which are not loaded because unpickling them "
                        f"can run code") from error
    if not isinstance(loaded, dict):
        raise DataError(f"{path} holds a {type(loaded).__name__}, not a dict of tensors")
    return loaded


def _first_sentence(error: Exception) -> str:
    """The gist of torch.load's error, which can run to a page of advice (some of it to load unsafely)."""
    text = str(error)
    # A weights-only refusal states its actual reason after this marker.
    text = text.split("WeightsUnpickler error:", 1)[-1].strip()
    return re.split(r"\.\s|\n", text, maxsplit=1)[0] or type(error).__name__


def _numeric(value: Any, path: Path, key: str) -> np.ndarray:
    """`value` (a tensor, an array or a list) as a numeric numpy array."""
    if isinstance(value, torch.Tensor):
        # numpy has no bfloat16; float32 holds it exactly, and the evaluation ranks in float32 anyway.
        value = value.detach().cpu()
        value = value.float() if value.dtype == torch.bfloat16 else value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:  # ragged lists, tensors that need a gradient, ...
        raise DataError(f"{path}: {key!r} is not an array ({error})") from error
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key!r} is not numeric (dtype {array.dtype})")
    return array


def discover(features_dir: Path, dataset: str) -> list[Path]:
    """{dataset}_0, {dataset}_1, ... in features_dir, up to the first missing index."""
    paths = []
    for k in itertools.count():
        found = [p for p in (features_dir / f"{dataset}_{k}{s}" for s in SUFFIXES) if p.is_file()]
        if len(found) > 1:
            raise DataError(f"modality {k} of {dataset!r} has several files: {', '.join(map(str, found))}; keep one")
        if not found:
            break
        paths.append(found[0])
    if len(paths) < 2:
        raise DataError(f"found {len(paths)} file(s) named {dataset}_<k>.mat|.npz|.pt in {features_dir}; "
                        f"cross-modal evaluation needs at least 2 ({dataset}_0, {dataset}_1, ...). "
                        f"Pass --features_dir and --datasets, or --files")
    return paths


def modality_names(dataset: str | None, count: int, given: list[str] | None) -> list[str]:
    """The names training gives these modalities, so that metrics.json reads the same."""
    if given:
        if len(given) != count:
            raise ConfigError(f"--names lists {len(given)} names for {count} modalities")
        return list(given)
    from drcl_fast.data import mfeat, released
    known = {"wiki": released.IMAGE_TEXT, "nus": released.IMAGE_TEXT, "INRIA-Websearch": released.IMAGE_TEXT,
             "xmedia": list(released.XMEDIA_KEYS), "xmedianet": released.FIVE_VIEWS, "mfeat": list(mfeat.VIEWS)}
    names = known.get(dataset)
    return list(names) if names is not None and len(names) == count else [str(k) for k in range(count)]


def parse_cutoffs(values: list[str]) -> list[int | None]:
    cutoffs: list[int | None] = []
    for value in values:
        if value.lower() == "all":
            cutoffs.append(None)
        elif value.isdigit() and int(value) > 0:
            cutoffs.append(int(value))
        else:
            raise ConfigError(f"--k takes 'all' or positive ints, got {value!r}")
    if len(set(cutoffs)) != len(cutoffs):
        raise ConfigError(f"--k lists a cutoff twice: {' '.join(values)}")
    return cutoffs


def requested_metrics(k_values: list[str] | None, metric_names: list[str] | None) -> list[MetricSpec]:
    """The metrics --metrics names; --k K is short for --metrics map@K (both given: they must agree on MAP)."""
    from_k = [MetricSpec("map", k) for k in parse_cutoffs(k_values)] if k_values else None
    if metric_names is None:
        return from_k or parse_metrics(DEFAULT_METRICS)
    specs = parse_metrics(metric_names)
    if from_k is not None and set(from_k) != {spec for spec in specs if spec.kind == "map"}:
        shown = " ".join(spec.name for spec in specs if spec.kind == "map") or "no MAP"
        raise ConfigError(f"--k {' '.join(k_values)} asks for {' '.join(s.name for s in from_k)} but --metrics "
                          f"asks for {shown}; --k K is short for --metrics map@K, so name the MAP cutoffs "
                          f"in --metrics alone")
    return specs


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but no CUDA device is available; use --device cpu")
    return device


def run_eval(args: argparse.Namespace) -> int:
    """The command; under torchrun every rank runs it, and only rank 0 prints and writes files."""
    with distributed.process_group() as spread:
        return _run_eval(args, "world" if spread else None)


def _run_eval(args: argparse.Namespace, group: str | None) -> int:
    if args.shard_gallery and args.pr_plot:
        raise ConfigError("--pr_plot cannot be combined with --shard_gallery: precision-recall curves need each "
                          "gallery whole on one rank. Drop --shard_gallery (rank 0 then draws the curves), or "
                          "draw them in a separate run")
    specs = requested_metrics(args.k, args.metrics)
    others = [spec for spec in specs if spec.kind != "map"]   # computed whole, on rank 0
    if args.shard_gallery and others:
        raise ConfigError(f"--metrics {' '.join(s.name for s in others)} cannot be combined with --shard_gallery: "
                          f"only MAP is computed over gallery slices. Drop --shard_gallery (rank 0 then computes "
                          f"them), or compute them in a separate run")
    reports = distributed.is_main()  # rank 0, or a process on its own
    dataset = args.datasets or (None if args.files else "wiki")
    paths = [Path(p) for p in args.files] if args.files else discover(Path(args.features_dir), dataset)
    names = modality_names(dataset, len(paths), args.names)
    device = pick_device(distributed.rank_device(args.device))
    outputs = [metrics_path(args.out)] if args.out else []
    if args.pr_plot:
        plot = Path(args.pr_plot)
        outputs += [plot, plot.with_suffix(".csv")]
    refuse_overwrite(outputs, args.overwrite)

    loaded = [load_embeddings(p) for p in paths]
    embeddings = [torch.as_tensor(features).to(device) for features, _ in loaded]
    labels = [labels for _, labels in loaded]
    if any(spec.instance for spec in specs):   # before any ranking: unpaired files cannot give these
        check_paired(embeddings, names)
    progress = reports and not args.quiet
    # Every rank takes part in MAP's collectives; the other metrics have no sharded form.
    found = {spec.name: evaluate_directions(embeddings, labels, names, k=spec.k, backend=args.backend,
                                            progress=progress, group=group,
                                            shard_gallery=args.shard_gallery and group is not None)
             for spec in specs if spec.kind == "map"}
    if not reports:
        return 0
    if others:
        found.update(evaluate_metrics(embeddings, labels, names, others, backend=args.backend, progress=progress))
    results: list[DirectionResult] = [found[spec.name] for spec in specs]
    for spec, result in zip(specs, results):
        # MAP in the released code's words; the others in the same form after their names.
        prefix = f"test resutls@{result.k or 'all'}:" if spec.kind == "map" else f"{spec.title}:"
        print(prefix + result_line(result))
    if not args.quiet:
        print(format_table(results))
    if args.out:
        save_json(metrics_path(args.out), metrics_dict(results))
        if not args.quiet:
            print(f"metrics written to {metrics_path(args.out)}")
    if args.pr_plot:
        curves = {f"{names[i]}->{names[j]}": precision_recall(embeddings[i], labels[i], embeddings[j], labels[j],
                                                              backend=args.backend)
                  for i in range(len(names)) for j in range(len(names)) if i != j}
        save_curves_csv(plot.with_suffix(".csv"), curves)
        plot_curves(plot, curves, title=dataset or "", modalities=names)
        if not args.quiet:
            print(f"precision-recall curves written to {plot} and {plot.with_suffix('.csv')}")
    return 0
