"""A gallery encoded once and kept: embeddings, item ids and the fingerprint of the model that made them.

One safetensors file: `embeddings` (N x D float32), the ids (`ids` int64, or `id_text`: the UTF-8 ids
joined by newlines), and in its metadata (one JSON entry, `drcl_fast`) the format, the modality and the
model's fingerprint (the SHA-256 of its weights), so that an index is searched only with queries of the
model that made it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from drcl_fast.errors import ModelError
from drcl_fast.outputs import atomic_write
from drcl_fast.serving.model_folder import TrainedModel, one_entry_metadata, read_metadata

FORMAT = "drcl_fast gallery index"
FORMAT_VERSION = 1


@dataclass
class GalleryIndex:
    """Encoded gallery items of one modality, their ids, and which model encoded them."""

    embeddings: torch.Tensor          # (N, D) float32 unit rows
    ids: list[str] | list[int]
    modality: str
    model_fingerprint: str
    model_dataset: str = ""

    def check_made_by(self, model: TrainedModel) -> None:
        """Raises ModelError unless `model` made this index (embeddings of another model share no space)."""
        if self.model_fingerprint != model.fingerprint:
            raise ModelError(f"this gallery index was made by another model (weights {self.model_fingerprint[:12]}..., "
                             f"dataset {self.model_dataset!r}) than the one given (weights {model.fingerprint[:12]}..., "
                             f"dataset {model.dataset!r}); its embeddings live in another space: build the index "
                             f"again with this model (drcl-fast index --model ...)")

    def save(self, path: str | Path) -> Path:
        """Write the index to `path` atomically; returns the path."""
        from safetensors.torch import save as to_safetensors
        tensors = {"embeddings": self.embeddings.detach().cpu().float().contiguous()}
        if all(isinstance(i, (int, np.integer)) for i in self.ids):
            tensors["ids"] = torch.tensor([int(i) for i in self.ids], dtype=torch.int64)
        else:
            text = "\n".join(self.ids).encode("utf-8")
            tensors["id_text"] = torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else \
                torch.zeros(0, dtype=torch.uint8)
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "modality": self.modality,
                    "model_fingerprint": self.model_fingerprint, "model_dataset": self.model_dataset}
        payload = to_safetensors(tensors, metadata=one_entry_metadata(metadata))
        atomic_write(Path(path), lambda tmp: tmp.write_bytes(payload))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "GalleryIndex":
        """Read an index written by `save` (or `drcl-fast index`).

        Raises:
            ModelError: missing, damaged or truncated file, not an index, or of a newer format.
        """
        from safetensors import safe_open
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"gallery index {path} does not exist; build it with drcl-fast index --model M "
                             f"--modality NAME --input ROWS --out {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = read_metadata(f.metadata())
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as error:   # safetensors raises its own types for a damaged or truncated file
            raise ModelError(f"cannot read gallery index {path}: {error}; the file is damaged or truncated: "
                             f"build it again with drcl-fast index") from error
        if metadata.get("format") != FORMAT or "embeddings" not in tensors:
            raise ModelError(f"{path} is not a drcl_fast gallery index (made by drcl-fast index)")
        if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelError(f"{path} is gallery index format version {metadata['format_version']}, newer than "
                             f"this drcl_fast reads ({FORMAT_VERSION}); upgrade drcl_fast")
        if "ids" in tensors:
            ids: list = tensors["ids"].tolist()
        else:
            text = bytes(tensors["id_text"].numpy()).decode("utf-8")
            ids = text.split("\n") if text else []
        if len(ids) != len(tensors["embeddings"]):
            raise ModelError(f"{path} holds {len(tensors['embeddings'])} embeddings but {len(ids)} ids; "
                             f"the file is damaged: build it again")
        return cls(tensors["embeddings"], ids, metadata["modality"], metadata["model_fingerprint"],
                   metadata.get("model_dataset", ""))


def build_index(model: TrainedModel, modality: int | str, rows: Any, ids: Sequence[Any] | None = None,
                preprocessed: bool = False) -> GalleryIndex:
    """Encode gallery `rows` of `modality` with `model` once, for any number of searches.

    Args:
        model: the trained model (its fingerprint goes with the index).
        modality: the gallery's modality (name or index).
        rows: (N, d) features.
        ids: one id per row (ints or strings); None: the row numbers 0..N-1.
        preprocessed: rows already as the loader returned them (see `TrainedModel.encode`).

    Raises:
        ModelError: bad rows, or a number of ids other than N.
    """
    embeddings = model.encode(modality, rows, preprocessed).cpu()
    ids = list(range(len(embeddings))) if ids is None else list(ids)
    if len(ids) != len(embeddings):
        raise ModelError(f"{len(ids)} ids for {len(embeddings)} gallery rows; give one id per row")
    if any(isinstance(i, str) and "\n" in i for i in ids):
        raise ModelError("gallery ids must not contain line breaks")
    return GalleryIndex(embeddings, ids, model.modalities[model.modality_index(modality)], model.fingerprint,
                        model.dataset)
