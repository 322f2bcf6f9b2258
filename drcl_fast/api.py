"""The modern API: `DRCL(config).fit(data)`, then `.encode(modality, x)`, `.search(...)`, `.save(path)` and the
results; `DRCL.load(path)` (or `drcl_fast.load_model`) in any other process."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data import MultiModalData, load_dataset
from drcl_fast.retrieval.report import DirectionResult
from drcl_fast.serving.model_folder import TrainedModel, load_model
from drcl_fast.training.trainer import FitResult, fit

ArrayLike = Union[np.ndarray, torch.Tensor, list]


class DRCL:
    """Train DRCL on a dataset and embed new items into the shared space.

    Args:
        config: the run's settings, made for the dataset it will fit
            (`DRCLConfig.preset(name, ...)`: that dataset's published settings, then yours).
            None: `fit` builds `DRCLConfig.preset(<the fitted data's name>, **overrides)`.
        **overrides: fields to change in `config` (or in the preset when `config` is None).
    """

    def __init__(self, config: DRCLConfig | None = None, **overrides) -> None:
        self._overrides = overrides
        self.config: DRCLConfig | None = config.replace(**overrides) if config is not None and overrides else config
        self.result: FitResult | None = None
        self._model: TrainedModel | None = None

    def fit(self, data: MultiModalData | str, progress: bool | None = None) -> "DRCL":
        """Train on `data` and write the released files under `config.out`.

        Args:
            data: a MultiModalData, or a dataset name for `load_dataset`.
            progress: progress bars (default: unless `config.quiet`).

        Raises:
            ConfigError: the config was made for another dataset than `data`.
        """
        if self.config is None:
            overrides = dict(self._overrides)
            name = overrides.pop("datasets", data if isinstance(data, str) else data.name)
            self.config = DRCLConfig.preset(name, **overrides)
        if isinstance(data, str):
            data = load_dataset(data, self.config.data_root, self.config.data_path, path_option="data_path=FILE")
        self.result = fit(data, self.config, progress=not self.config.quiet if progress is None else progress)
        self._model = self.result.model
        return self

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "DRCL":
        """A DRCL that encodes and searches with a saved model folder (`--out/model`, or `save`'s).

        Its `config` is the run's; `result` (losses, SPL scores) stays None: only the model is saved.

        Raises:
            ModelError: the folder is missing, damaged or of a newer format.
        """
        model = load_model(path, device)
        loaded = cls(DRCLConfig(**{k: v for k, v in model.config.items() if k in DRCLConfig.__dataclass_fields__}))
        loaded._model = model
        return loaded

    @property
    def model(self) -> TrainedModel:
        """The trained encoders, prior and preprocessing (what `--out/model/` holds)."""
        if self._model is None:
            raise RuntimeError("call .fit(data) or DRCL.load(path) first")
        return self._model

    def save(self, path: str | Path) -> Path:
        """Write the model folder (safetensors weights and a JSON manifest) to `path`; returns it."""
        return self.model.save(path)

    @property
    def metrics(self) -> list[DirectionResult]:
        """[MAP@all, MAP@50] over every direction (empty until all modalities are trained)."""
        return self._fitted().metrics

    @property
    def prior(self) -> torch.Tensor:
        return self._fitted().prior

    @property
    def spl_scores(self) -> dict[str, dict[int, float]]:
        """SPL's quality score S_k(e) per modality and sampled epoch."""
        return {r.modality: dict(r.scores) for r in self._fitted().spl}

    def encode(self, modality: int | str, x: ArrayLike, preprocessed: bool = False) -> torch.Tensor:
        """Unit-norm embeddings of rows `x` by the selected encoder of `modality` (index or name).

        Rows are taken as the user has them: where the loader standardised the data (the bundled
        mfeat), the run's statistics are applied first; `preprocessed=True` for rows already as
        `load_dataset` returns them. See `TrainedModel.encode`.
        """
        return self.model.encode(modality, x, preprocessed)

    def search(self, queries: ArrayLike, query_modality: int | str, gallery: ArrayLike,
               gallery_modality: int | str | None = None, k: int = 10, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) of the `k` nearest gallery items per query, best first: `TrainedModel.search`."""
        return self.model.search(queries, query_modality, gallery, gallery_modality, k, **options)

    def _fitted(self) -> FitResult:
        if self.result is None:
            raise RuntimeError("call .fit(data) first")
        return self.result
