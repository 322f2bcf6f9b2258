"""A trained DRCL as a folder you keep, share and load anywhere: `TrainedModel`, `load_model`.

Layout of a model folder (`--out/model/` of every run, or `DRCL.save(path)`):

    manifest.json         what the weights are: format version, dataset, modalities (name, input width,
                          preprocessing, selected epoch, rate), sizes, classes, the run's config and
                          metrics, package and torch versions, and the weights file's size and SHA-256
    weights.safetensors   encoder{k}.* (the selected encoder of modality k), prior.W (D x C) and
                          prior.pinv (C x D), preprocessing{k}.mean / .scale (float64) where the
                          loader standardised modality k

Weights are safetensors (loading runs no code); both files are written atomically, the manifest
last, and the manifest's digest of the weights makes a truncated or mismatched pair an error.
"""
from __future__ import annotations

import copy
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from drcl_fast.config import DEFAULT_PRECISION
from drcl_fast.data.container import Standardisation
from drcl_fast.errors import ModelError
from drcl_fast.model import Encoder, encoder_from_state
from drcl_fast.outputs import atomic_write, save_json
from drcl_fast.runtime.precision import compute_dtype, matrix_precision
from drcl_fast.training.modality import encode

FORMAT = "drcl_fast model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


@dataclass
class ModalityEntry:
    """One trained modality of a model: its name, its input and what the run selected."""

    index: int                       # position among the dataset's modalities
    name: str
    input_dim: int
    best_epoch: int | None = None
    best_val_loss: float | None = None
    lr: float | None = None

    def to_json(self, standardised: bool) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "input_dim": self.input_dim,
                "preprocessing": "standardise" if standardised else None, "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss, "lr": self.lr}


@dataclass
class TrainedModel:
    """Trained DRCL encoders and the prior they share: encode new items, search a gallery, save.

    Made by a run (`--out/model/`, `DRCL.model`) or by `load_model(path)`.
    """

    dataset: str
    modalities: list[str]                           # every modality of the data, trained or not
    entries: dict[int, ModalityEntry]               # the trained ones, by index
    encoders: dict[int, Encoder]
    prior: torch.Tensor                             # W, D x C
    prior_pinv: torch.Tensor                        # W+, C x D
    preprocessing: dict[int, Standardisation] = field(default_factory=dict)
    classes: list[int] | None = None                # sorted class ids (single-label)
    class_names: list[str] | None = None
    multilabel: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    prior_source: str = ""
    run_identity: str = ""                          # the run's settings and data, modality choice aside
    versions: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""                           # SHA-256 of the weights file, once saved or loaded

    def __post_init__(self) -> None:
        for encoder in self.encoders.values():   # they encode as the run did (docs/precision.md)
            encoder.compute_dtype = compute_dtype(self.precision)

    @property
    def precision(self) -> str:
        """The matrix precision the run trained and encoded at (drcl_fast.runtime.precision)."""
        return self.config.get("precision", DEFAULT_PRECISION)

    @property
    def device(self) -> torch.device:
        return self.prior.device

    @property
    def output_dim(self) -> int:
        return int(self.prior.shape[0])

    @property
    def trained(self) -> list[str]:
        """Names of the modalities this model can encode."""
        return [self.modalities[k] for k in sorted(self.encoders)]

    def modality_index(self, modality: int | str) -> int:
        """The index of a trained modality given by name, by index, or by an index written as digits
        (as a command line gives it).

        Raises:
            ModelError: the model has no encoder for it (the message lists those it has).
        """
        k = modality
        if modality in self.modalities:
            k = self.modalities.index(modality)
        elif isinstance(modality, str) and modality.isdigit():
            k = int(modality)
        if not isinstance(k, int) or k not in self.encoders:
            raise ModelError(f"modality {modality!r} is not in this model; it encodes {self.trained} "
                             f"(by name, or by index {sorted(self.encoders)})")
        return k

    def to(self, device: torch.device | str) -> "TrainedModel":
        """This model with its tensors on `device` (in place; returns self)."""
        self.encoders = {k: e.to(device) for k, e in self.encoders.items()}
        self.prior, self.prior_pinv = self.prior.to(device), self.prior_pinv.to(device)
        return self

    def model_inputs(self, modality: int | str, x: Any, preprocessed: bool = False) -> torch.Tensor:
        """`x` as the encoder of `modality` takes it: preprocessed as training's rows were, float32, on
        the model's device.

        Raises:
            ModelError: unknown modality; `x` is not a 2-D array of the modality's width, or holds NaN or Inf.
        """
        k = self.modality_index(modality)
        entry = self.entries[k]
        rows = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        if rows.ndim == 1 and rows.shape[0] == entry.input_dim:
            rows = rows[None, :]    # one item
        if rows.ndim != 2 or rows.shape[1] != entry.input_dim:
            raise ModelError(f"modality {entry.name!r} takes rows of width {entry.input_dim}; got an array of "
                             f"shape {tuple(rows.shape)}: pass (n, {entry.input_dim}) features of that modality")
        if not np.issubdtype(rows.dtype, np.number) or rows.dtype == np.bool_:
            raise ModelError(f"modality {entry.name!r}: features must be numeric, got dtype {rows.dtype}")
        standardisation = self.preprocessing.get(k)
        if standardisation is not None and not preprocessed:
            rows = standardisation.apply(rows)
        with np.errstate(over="ignore"):   # as the loader casts training rows: beyond float32 is Inf, refused
            rows = np.ascontiguousarray(rows, dtype=np.float32)
        if not np.isfinite(rows).all():
            bad = int((~np.isfinite(rows)).any(axis=1).sum())
            raise ModelError(f"modality {entry.name!r}: {bad} of the {len(rows)} rows hold NaN or Inf "
                             f"(after preprocessing); fix or drop them")
        return torch.from_numpy(rows).to(self.device)

    @torch.no_grad()
    def encode(self, modality: int | str, x: Any, preprocessed: bool = False,
               precision: str | None = None) -> torch.Tensor:
        """Unit-norm embeddings (n, D) float32 of the rows `x` of `modality` (name or index).

        Args:
            modality: a trained modality's name or index.
            x: (n, d) features as the user has them (numpy, torch or nested lists); one (d,) row is one item.
                Where the loader standardised the modality (the bundled mfeat data), the model applies the
                same statistics first.
            preprocessed: True when `x` is already as the loader returned it (e.g. rows of
                `load_dataset(...)`), so the statistics are not applied twice.
            precision: the products' precision (docs/precision.md); None: the run's (`self.precision`).
                "fp32" encodes a bf16 model in float32, e.g. on a CPU without bf16 instructions (the
                embeddings then differ from the run's within bf16 rounding).

        Returns:
            float32 embeddings on the model's device. Rows encode in the chunks a run encodes its test
            split in, and at the run's precision, so the test split gives the bits the run wrote to features/.

        Raises:
            ModelError: the model has no encoder for `modality`; `x` has the wrong width, is not numeric, or holds NaN or Inf.
        """
        k = self.modality_index(modality)
        precision = self.precision if precision is None else precision
        encoder = self.encoders[k]
        if precision != self.precision:   # a view of the same weights with other products
            encoder = copy.copy(encoder)
            encoder.compute_dtype = compute_dtype(precision)
        with matrix_precision(precision, self.device):
            return encode(encoder, self.model_inputs(k, x, preprocessed))

    def search(self, queries: Any, query_modality: int | str, gallery: Any, gallery_modality: int | str | None = None,
               k: int = 10, backend: str = "auto", max_memory: int | None = None,
               preprocessed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` gallery items nearest to each query in the shared space, best first.

        Args:
            queries: (Q, d) rows of `query_modality`.
            query_modality: its name or index.
            gallery: (N, d') rows of `gallery_modality`, or a `GalleryIndex` made by this model
                (its embeddings are used as they are).
            gallery_modality: the gallery rows' modality (not needed with an index).
            k: how many items per query.
            backend: "auto", "torch", "cpp" or "triton" (`drcl_fast.retrieval.topk`).
            max_memory: bytes for one chunk's working set (None: the backend's default).
            preprocessed: rows already as the loader returned them (see `encode`).

        Returns:
            (scores (Q, k) float32 cosine similarities, indices (Q, k) int64 gallery rows), ranked by score
            with ties broken by the lower gallery index: the order MAP ranks in.

        Raises:
            ModelError: a modality the model has no encoder for, bad rows, or an index made by another model.
            ConfigError: k outside 1..N.
        """
        from drcl_fast.retrieval import topk
        from drcl_fast.serving.gallery_index import GalleryIndex
        query_embeddings = self.encode(query_modality, queries, preprocessed)
        if isinstance(gallery, GalleryIndex):
            gallery.check_made_by(self)
            gallery_embeddings = gallery.embeddings.to(self.device)
        else:
            if gallery_modality is None:
                raise ModelError("gallery_modality is needed when the gallery is given as rows (not an index)")
            gallery_embeddings = self.encode(gallery_modality, gallery, preprocessed)
        return topk(query_embeddings, gallery_embeddings, k, backend=backend, max_memory=max_memory)

    def save(self, path: str | Path) -> Path:
        """Write this model as a folder at `path` (created; its two files replaced atomically).

        Returns:
            The folder.
        """
        from safetensors.torch import save as to_safetensors
        folder = Path(path)
        # In modality order, whatever order the encoders arrived in (ranks, threads): one model, one byte string.
        tensors = {"prior.W": self.prior, "prior.pinv": self.prior_pinv}
        for k in sorted(self.encoders):
            tensors.update({f"encoder{k}.{name}": value for name, value in self.encoders[k].state_dict().items()})
        for k, standardisation in sorted(self.preprocessing.items()):
            tensors[f"preprocessing{k}.mean"] = torch.from_numpy(np.asarray(standardisation.mean, np.float64))
            tensors[f"preprocessing{k}.scale"] = torch.from_numpy(np.asarray(standardisation.scale, np.float64))
        payload = to_safetensors({name: t.detach().cpu().contiguous() for name, t in tensors.items()},
                                 metadata=one_entry_metadata({"format": FORMAT, "format_version": FORMAT_VERSION}))
        atomic_write(folder / WEIGHTS, lambda tmp: tmp.write_bytes(payload))
        self.fingerprint = hashlib.sha256(payload).hexdigest()
        save_json(folder / MANIFEST, self._manifest(len(payload)))
        return folder

    def _manifest(self, weights_bytes: int) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "dataset": self.dataset, "modalities": list(self.modalities),
            "encoders": [self.entries[k].to_json(k in self.preprocessing) for k in sorted(self.encoders)],
            "hidden_dim": int(next(iter(self.encoders.values())).body[0].weight.shape[0]) if self.encoders else None,
            "output_dim": self.output_dim, "num_classes": int(self.prior.shape[1]), "multilabel": self.multilabel,
            "classes": self.classes, "class_names": self.class_names, "prior_source": self.prior_source,
            "config": self.config, "metrics": self.metrics, "run_identity": self.run_identity,
            "versions": self.versions or current_versions(),
            "weights": {"file": WEIGHTS, "bytes": weights_bytes, "sha256": self.fingerprint},
        }


def one_entry_metadata(values: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata as one JSON entry: safetensors writes its metadata map in an order that varies from
    process to process, so several entries would make the same model two different byte strings."""
    return {"drcl_fast": json.dumps(values, sort_keys=True)}


def read_metadata(metadata: dict[str, str] | None) -> dict[str, Any]:
    """What `one_entry_metadata` wrote ({} where the file holds none, or not as JSON)."""
    try:
        values = json.loads((metadata or {}).get("drcl_fast", "{}"))
    except json.JSONDecodeError:
        return {}
    return values if isinstance(values, dict) else {}


def current_versions() -> dict[str, str]:
    import drcl_fast
    return {"drcl_fast": drcl_fast.__version__, "torch": torch.__version__, "python": platform.python_version()}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """A model folder written by a run (`--out/model`) or by `DRCL.save`, ready to encode and search.

    Args:
        path: the folder (or its manifest.json).
        device: where its tensors go ("cpu", "cuda", ...).

    Returns:
        The TrainedModel, its encoders in eval mode.

    Raises:
        ModelError: the folder or a file is missing, damaged, truncated, of a newer format, or the two
            files do not belong together; the message names the file and what to do.
    """
    folder = Path(path)
    folder = folder.parent if folder.name == MANIFEST else folder
    manifest = _read_manifest(folder)
    try:
        model = _model_of(manifest, _read_weights(folder, manifest))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, ModelError):
            raise
        raise ModelError(f"{folder}: the manifest and the weights do not fit together ({type(error).__name__}: "
                         f"{error}); the folder is damaged or was edited: copy it again whole") from error
    model.fingerprint = manifest["weights"]["sha256"]
    return model.to(device)


def _read_manifest(folder: Path) -> dict[str, Any]:
    where = folder / MANIFEST
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a model folder (it does not exist); a run writes one to --out/model, "
                         f"DRCL.save(path) anywhere")
    if not where.is_file():
        raise ModelError(f"{where} does not exist: {folder} is not a model folder, or its writing was cut short; "
                         f"point to a run's --out/model folder, or write the model again")
    try:
        manifest = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {where}: {error}; the file is damaged: copy the model folder again "
                         f"or rerun the training that wrote it") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{where} is not a drcl_fast model manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{where} is model format version {version!r}, newer than this drcl_fast reads "
                         f"({FORMAT_VERSION}); upgrade drcl_fast (pip install -U drcl_fast) to load it")
    return manifest


def _read_weights(folder: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as from_safetensors
    expected = manifest.get("weights", {})
    where = folder / expected.get("file", WEIGHTS)
    if not where.is_file():
        raise ModelError(f"{where} does not exist; the model folder is incomplete: copy it again whole")
    payload = where.read_bytes()
    if len(payload) != expected.get("bytes") or hashlib.sha256(payload).hexdigest() != expected.get("sha256"):
        raise ModelError(f"{where} holds {len(payload):,} bytes that are not the weights {folder / MANIFEST} "
                         f"describes ({expected.get('bytes'):,} bytes, SHA-256 {str(expected.get('sha256'))[:12]}...): "
                         f"the file is truncated, damaged or from another model; copy the folder again whole")
    try:
        tensors = from_safetensors(payload)
    except Exception as error:   # safetensors raises its own error types for a malformed file
        raise ModelError(f"cannot read {where}: {error}") from error
    return tensors


def _model_of(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TrainedModel:
    entries = {e["index"]: ModalityEntry(e["index"], e["name"], e["input_dim"], e.get("best_epoch"),
                                         e.get("best_val_loss"), e.get("lr")) for e in manifest["encoders"]}
    encoders, preprocessing = {}, {}
    for k in entries:
        prefix = f"encoder{k}."
        state = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        encoders[k] = encoder_from_state(state).eval()
        if f"preprocessing{k}.mean" in tensors:
            preprocessing[k] = Standardisation(tensors[f"preprocessing{k}.mean"].numpy(),
                                               tensors[f"preprocessing{k}.scale"].numpy())
    return TrainedModel(
        dataset=manifest["dataset"], modalities=list(manifest["modalities"]), entries=entries, encoders=encoders,
        prior=tensors["prior.W"], prior_pinv=tensors["prior.pinv"], preprocessing=preprocessing,
        classes=manifest.get("classes"), class_names=manifest.get("class_names"),
        multilabel=bool(manifest.get("multilabel")), config=manifest.get("config", {}),
        metrics=manifest.get("metrics", {}), prior_source=manifest.get("prior_source", ""),
        run_identity=manifest.get("run_identity", ""), versions=manifest.get("versions", {}))


def model_of_run(dataset: str, modalities: Sequence[str], encoder_states: Mapping[int, dict[str, torch.Tensor]],
                 entries: Mapping[int, ModalityEntry], prior: torch.Tensor, preprocessing: Sequence[Any] | None,
                 **fields: Any) -> TrainedModel:
    """A TrainedModel of a run's selected encoders (on the CPU); `fields` as TrainedModel's."""
    from drcl_fast import ops
    prior = prior.detach().cpu()
    encoders = {k: encoder_from_state({n: t.cpu() for n, t in state.items()}).eval()
                for k, state in encoder_states.items()}
    kept = {k: preprocessing[k] for k in encoders if preprocessing is not None and preprocessing[k] is not None}
    return TrainedModel(dataset=dataset, modalities=list(modalities), entries=dict(entries), encoders=encoders,
                        prior=prior, prior_pinv=ops.prior_pinv(prior).cpu(), preprocessing=kept,
                        versions=current_versions(), **fields)
