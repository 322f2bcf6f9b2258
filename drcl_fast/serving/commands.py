"""`drcl-fast index` and `drcl-fast search`: encode a gallery once, then find each query's nearest items.

    drcl-fast index  --model runs/x/model --modality txt --input gallery.npy --out gallery.idx
    drcl-fast search --model runs/x/model --index gallery.idx --modality img --query queries.npy --k 10 --out hits.csv

Rows come from .npy, .npz, .pt, .mat or .h5 files (one array, or the one `--key` names), as the user
has them: the model applies its run's preprocessing. Hits are written per query and rank with the
gallery item's id and its cosine score: CSV (query,rank,id,score) or JSON lines (one query per line).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from drcl_fast.errors import ConfigError, DataError
from drcl_fast.outputs import atomic_write, refuse_overwrite
from drcl_fast.runtime import backends
from drcl_fast.serving.gallery_index import GalleryIndex, build_index
from drcl_fast.serving.model_folder import TrainedModel, load_model

ROW_SUFFIXES = (".npy", ".npz", ".pt", ".mat", ".h5", ".hdf5")
HIT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
RECALL_SAMPLE = 200   # queries an approximate search is checked on against the exact one


def add_index_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="a model folder (a run's --out/model)")
    parser.add_argument("--modality", required=True, help="the gallery's modality (name or index)")
    parser.add_argument("--input", required=True, metavar="FILE", help=f"gallery rows ({', '.join(ROW_SUFFIXES)})")
    parser.add_argument("--key", default=None, help="the array's name in --input when it holds several")
    parser.add_argument("--ids", default=None, metavar="FILE",
                        help="a text file of one id per row, in row order (default: the row numbers 0, 1, ...)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the index file to write (e.g. gallery.idx)")
    _add_common_flags(parser)


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="the model folder that made --index")
    parser.add_argument("--index", required=True, metavar="FILE", help="a gallery index (drcl-fast index)")
    parser.add_argument("--modality", required=True, help="the queries' modality (name or index)")
    parser.add_argument("--query", required=True, metavar="FILE", help=f"query rows ({', '.join(ROW_SUFFIXES)})")
    parser.add_argument("--key", default=None, help="the array's name in --query when it holds several")
    parser.add_argument("--query_ids", "--query-ids", default=None, metavar="FILE",
                        help="a text file of one id per query row (default: the row numbers 0, 1, ...)")
    parser.add_argument("--k", type=int, default=10, help="items per query (default: 10)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the hits: .csv (query,rank,id,score) or .jsonl (one query per line)")
    parser.add_argument("--backend", **backends.flag_options())
    parser.add_argument("--approximate", choices=("hnsw", "ivf", "flat"), default=None,
                        help="search with a faiss index instead of exactly (needs the faiss extra); its recall@k "
                             f"against the exact search is measured on up to {RECALL_SAMPLE} queries and printed")
    _add_common_flags(parser)


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preprocessed", action="store_true",
                        help="the rows are already preprocessed as the training rows were (as load_dataset returns "
                             "them); by default the model applies its run's preprocessing")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def read_rows(path: str | Path, key: str | None = None) -> np.ndarray:
    """The array of rows in a file: the only array it holds, or the one named `key`.

    Raises:
        DataError: missing or unreadable file, unknown type, no such key, several arrays and no key.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if suffix not in ROW_SUFFIXES:
        raise DataError(f"{path}: unknown file type {suffix!r}; give rows as one of {', '.join(ROW_SUFFIXES)}")
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as error:   # numpy raises several types for a damaged file
            raise DataError(f"cannot read {path}: {error}") from error
    if suffix == ".pt":
        return _from_torch_file(path, key)
    from drcl_fast.data.generic import ArrayFile
    with ArrayFile(path) as f:
        return f[_the_key(path, f.keys(), key)]


def _from_torch_file(path: Path, key: str | None) -> np.ndarray:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # torch raises several types for a damaged or pickled file
        raise DataError(f"cannot read {path}: {error}; save rows with torch.save(tensor, file)") from error
    if isinstance(value, dict):
        value = value[_the_key(path, sorted(value), key)]
    if not torch.is_tensor(value):
        raise DataError(f"{path} holds a {type(value).__name__}, not a tensor of rows")
    return value.numpy()


def _the_key(path: Path, keys: Sequence[str], key: str | None) -> str:
    if key is not None:
        if key not in keys:
            raise DataError(f"{path} has no array {key!r}; arrays present: {list(keys)}")
        return key
    if len(keys) != 1:
        raise DataError(f"{path} holds {len(keys)} arrays {list(keys)[:10]}; name the rows with --key")
    return keys[0]


def read_ids(path: str | Path | None, count: int, what: str) -> list[str] | None:
    """One id per line of a text file (None: no file); their number must be `count`."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    ids = path.read_text(encoding="utf-8").splitlines()
    if len(ids) != count:
        raise DataError(f"{path} holds {len(ids)} ids (one per line) for {count} rows; give one id per row")
    return ids


def run_index(args: argparse.Namespace) -> int:
    """`drcl-fast index`: encode the gallery rows and write the index."""
    refuse_overwrite([Path(args.out)], args.overwrite)
    started = time.perf_counter()
    model = load_model(args.model, args.device)
    rows = read_rows(args.input, args.key)
    index = build_index(model, args.modality, rows, read_ids(args.ids, len(rows), "--ids"),
                        args.preprocessed)
    index.save(args.out)
    if not args.quiet:
        print(f"indexed {len(rows):,} {index.modality} items with {args.model} in "
              f"{time.perf_counter() - started:.1f} s: {args.out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    """`drcl-fast search`: each query's k nearest gallery items, written as CSV or JSON lines."""
    out = Path(args.out)
    form = HIT_FORMATS.get(out.suffix.lower())
    if form is None:
        raise ConfigError(f"--out {out}: write hits to a .csv or .jsonl file")
    refuse_overwrite([out], args.overwrite)
    model = load_model(args.model, args.device)
    index = GalleryIndex.load(args.index)
    index.check_made_by(model)
    rows = read_rows(args.query, args.key)
    query_ids = read_ids(args.query_ids, len(rows), "--query_ids")
    started = time.perf_counter()
    queries = model.encode(args.modality, rows, args.preprocessed)
    scores, indices = _search(model, queries, index, args)
    seconds = time.perf_counter() - started
    write_hits(out, form, scores, indices, index.ids, query_ids or list(range(len(rows))))
    if not args.quiet:
        print(f"searched {len(rows):,} queries against {len(index.ids):,} items (k={args.k}) in {seconds:.2f} s: {out}")
    return 0


def _search(model: TrainedModel, queries: torch.Tensor, index: GalleryIndex,
            args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    from drcl_fast.retrieval import topk
    gallery = index.embeddings.to(model.device)
    if args.approximate is None:
        return topk(queries, gallery, args.k, backend=args.backend)
    from drcl_fast.retrieval.nearest import approximate_topk, recall_at_k
    scores, indices = approximate_topk(queries, gallery, args.k, index=args.approximate)
    sample = torch.linspace(0, len(queries) - 1, min(RECALL_SAMPLE, len(queries))).round().long().unique()
    _, exact = topk(queries[sample], gallery, args.k, backend=args.backend)
    recall = recall_at_k(indices[sample], exact)
    if not args.quiet:
        print(f"approximate search ({args.approximate}): recall@{args.k} {recall:.4f} against the exact search "
              f"on {len(sample)} of the {len(queries)} queries")
    return scores, indices


def write_hits(out: Path, form: str, scores: torch.Tensor, indices: torch.Tensor, gallery_ids: Sequence[Any],
               query_ids: Sequence[Any]) -> None:
    """Per query and rank (1 = best): the gallery item's id and its score, written atomically.

    Scores are written with as many digits as float64 needs to give back the float32 value exactly.
    """
    scores, indices = scores.cpu().tolist(), indices.cpu().tolist()

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            if form == "csv":
                writer = csv.writer(fh)
                writer.writerow(["query", "rank", "id", "score"])
                for q, row_scores, row_indices in zip(query_ids, scores, indices):
                    writer.writerows([q, rank, gallery_ids[i], repr(s)]
                                     for rank, (s, i) in enumerate(zip(row_scores, row_indices), start=1))
            else:
                for q, row_scores, row_indices in zip(query_ids, scores, indices):
                    hits = [{"rank": rank, "id": gallery_ids[i], "score": s}
                            for rank, (s, i) in enumerate(zip(row_scores, row_indices), start=1)]
                    fh.write(json.dumps({"query": q, "hits": hits}) + "\n")
    atomic_write(out, write)
