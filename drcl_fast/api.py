"""The modern API: `DRCL(config).fit(data)`, then `.encode(modality, x)` and the results."""
from __future__ import annotations

import numpy as np
import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data import MultiModalData, load_dataset
from drcl_fast.model import Encoder, encoder_from_state
from drcl_fast.retrieval.report import DirectionResult
from drcl_fast.trainer import FitResult, fit


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
        self._encoders: dict[int, Encoder] = {}

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
        self._encoders = {k: encoder_from_state(rsc.encoder_state).eval() for k, rsc in self.result.rsc.items()}
        return self

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

    @torch.no_grad()
    def encode(self, modality: int | str, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of `x` by the selected encoder of `modality` (index or name).

        `x` must be preprocessed as the training features were (the bundled mfeat
        data is standardised at load time).
        """
        names = self._fitted().modalities
        k = names.index(modality) if modality in names else modality
        if k not in self._encoders:
            raise KeyError(f"modality {modality!r} was not trained in this run (trained: "
                           f"{[names[i] for i in self._encoders]})")
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
        return self._encoders[k](x)

    def _fitted(self) -> FitResult:
        if self.result is None:
            raise RuntimeError("call .fit(data) first")
        return self.result
