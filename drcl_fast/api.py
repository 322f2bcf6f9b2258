"""The modern API: `DRCL(config).fit(data)`, then `.encode(modality, x)`, `.search(...)`, `.save(path)` and the
results; `DRCL.load(path)` (or `drcl_fast.load_model`) in any other process."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from drcl_fast.config import DRCLConfig
from drcl_fast.data import MultiModalData, load_dataset
from drcl_fast.retrieval.reference import ArrayLike
from drcl_fast.retrieval.report import DirectionResult
from drcl_fast.serving.model_folder import TrainedModel, load_model
from drcl_fast.training.trainer import FitResult, fit


class DRCL:
    """Train DRCL on a dataset and embed new items into the shared space.

    Args:
        config: the run's settings, made for the dataset it will fit
            (`DRCLConfig.preset(name, ...)`: that dataset's published settings, then yours).
            None: `fit` builds `DRCLConfig.preset(<the fitted data's name>, **overrides)`.
        **overrides: fields of DRCLConfig to change in `config` (or in the preset when `config` is None).

    Raises:
        TypeError: an override that is not a DRCLConfig field (with no config: at `fit`).

    Example:
        Train the bundled digits' six views at a tiny size (the "mfeat" preset trains for about a
        minute), then encode, search, save and load:

        >>> import tempfile
        >>> import torch
        >>> from drcl_fast import DRCL, load_dataset
        >>> with tempfile.TemporaryDirectory() as out:
        ...     model = DRCL(out=out, epochs=1, hidden_shape=16, output_shape=16, quiet=True,
        ...                  device="cpu").fit("mfeat")
        ...     loaded = DRCL.load(model.save(f"{out}/mine"))
        >>> len(model.metrics[0].directions), 0 < model.metrics[0].mean <= 1   # MAP@all of 30 directions
        (30, True)
        >>> list(model.spl_scores), model.prior.shape                          # the prior W: D x C
        (['fou', 'fac', 'kar', 'pix', 'zer', 'mor'], torch.Size([16, 10]))
        >>> test = load_dataset("mfeat").test                                  # standardised rows
        >>> pix = model.encode("pix", test.features[3], preprocessed=True)
        >>> pix.shape, round(float(pix.norm(dim=1).mean()), 4)
        (torch.Size([400, 16]), 1.0)
        >>> scores, items = model.search(test.features[3][:2], "pix", test.features[0], "fou", k=5,
        ...                              preprocessed=True)
        >>> items.shape, bool((scores[:, :-1] >= scores[:, 1:]).all())        # best first
        (torch.Size([2, 5]), True)
        >>> torch.equal(loaded.encode("pix", test.features[3], preprocessed=True), pix)
        True
    """

    def __init__(self, config: DRCLConfig | None = None, **overrides: Any) -> None:
        self._overrides = overrides
        self.config: DRCLConfig | None = config.replace(**overrides) if config is not None and overrides else config
        self.result: FitResult | None = None
        self._model: TrainedModel | None = None

    def fit(self, data: MultiModalData | str, progress: bool | None = None) -> "DRCL":
        """Train on `data` (SPL, RSC per modality, evaluation); write the released files under `config.out`.

        Args:
            data: a MultiModalData, or a dataset name for `load_dataset` (read from
                `config.data_root`, or `config.data_path` for a generic container).
            progress: progress bars (default: unless `config.quiet`).

        Returns:
            This DRCL, trained: `model`, `result`, `metrics`, `prior`, `spl_scores` are set.

        Raises:
            ConfigError: the config was made for another dataset than `data`, or a setting that
                cannot work with this data or machine (checked before training starts).
            DataError: a dataset name that `load_dataset` cannot load, or data that cannot train.
            BackendError: `config.backend` cannot run on `config.device`.
            OutputExistsError: `config.out` holds a run's files (pass `overwrite=True`), or
                checkpoints of another run.
            OutputError: `config.out` cannot be written.
            CheckpointError: `resume=True` with a checkpoint that cannot be read or is of other settings.
            NonFiniteLossError: training produced a NaN or infinite loss.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from drcl_fast import DRCL, DRCLConfig, load_dataset
            >>> data = load_dataset("mfeat").select([0, 3])                  # two views: fou, pix
            >>> with tempfile.TemporaryDirectory() as out:
            ...     model = DRCL(out=out, epochs=1, hidden_shape=16, output_shape=16, lr=1e-3,
            ...                  quiet=True, device="cpu").fit(data)
            ...     sorted(p.name for p in Path(out, "features").iterdir())
            ['mfeat_0.mat', 'mfeat_1.mat']
            >>> list(model.metrics[0].directions)
            ['fou->pix', 'pix->fou']
            >>> DRCL(DRCLConfig(out="unused")).fit(data)                  # DRCLConfig() is wiki's
            Traceback (most recent call last):
                ...
            drcl_fast.errors.ConfigError: the configuration is for dataset 'wiki' ... but the data is 'mfeat'; ...
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

        Its `config` is the run's; `result` (losses, SPL scores) stays None: only the model is
        saved, so `metrics`, `prior` and `spl_scores` raise RuntimeError.

        Args:
            path: the model folder (or its manifest.json).
            device: where its tensors go ("cpu", "cuda", ...).

        Returns:
            The DRCL, ready to `encode` and `search`.

        Raises:
            ModelError: the folder or a file is missing, damaged, truncated or of a newer format;
                the message names the file and what to do.

        Example:
            >>> from drcl_fast import DRCL
            >>> DRCL.load("no/such/folder")          # the class's example loads a saved model
            Traceback (most recent call last):
                ...
            drcl_fast.errors.ModelError: no/such/folder is not a model folder (it does not exist); ...
        """
        model = load_model(path, device)
        loaded = cls(DRCLConfig(**{k: v for k, v in model.config.items() if k in DRCLConfig.__dataclass_fields__}))
        loaded._model = model
        return loaded

    @property
    def model(self) -> TrainedModel:
        """The trained encoders, prior and preprocessing (what `--out/model/` holds), a TrainedModel.

        Raises:
            RuntimeError: neither `fit` nor `DRCL.load` has run.
        """
        if self._model is None:
            raise RuntimeError("call .fit(data) or DRCL.load(path) first")
        return self._model

    def save(self, path: str | Path) -> Path:
        """Write the model folder (safetensors weights and a JSON manifest) to `path`, for `DRCL.load`.

        Args:
            path: the folder to write (created; files in it are replaced).

        Returns:
            The folder's path.

        Raises:
            RuntimeError: neither `fit` nor `DRCL.load` has run.
            OSError: the folder cannot be written.

        See Also:
            The class's example, which saves a model and loads it back.
        """
        return self.model.save(path)

    @property
    def metrics(self) -> list[DirectionResult]:
        """[MAP@all, MAP@50] over every direction, as DirectionResults (empty unless every modality was trained).

        Raises:
            RuntimeError: `fit` has not run (a loaded model has no results).
        """
        return self._fitted().metrics

    @property
    def prior(self) -> torch.Tensor:
        """The prior W (D x C) the encoders were trained against.

        Raises:
            RuntimeError: `fit` has not run (a loaded model's prior is `model.prior`).
        """
        return self._fitted().prior

    @property
    def spl_scores(self) -> dict[str, dict[int, float]]:
        """SPL's quality score S_k(e) per modality name and sampled epoch.

        Raises:
            RuntimeError: `fit` has not run.
        """
        return {r.modality: dict(r.scores) for r in self._fitted().spl}

    def encode(self, modality: int | str, x: ArrayLike, preprocessed: bool = False) -> torch.Tensor:
        """Unit-norm embeddings of rows `x` by the selected encoder of `modality` (`TrainedModel.encode`).

        Args:
            modality: a trained modality's name or index.
            x: (n, d) rows as the user has them (tensor, numpy array or nested lists); one (d,)
                row is one item. Where the loader standardised the data (the bundled mfeat), the
                run's statistics are applied first.
            preprocessed: True for rows already as `load_dataset` returns them, so the statistics
                are not applied twice.

        Returns:
            (n, D) float32 unit rows on the model's device; the test split gives the bits the run
            wrote to features/.

        Raises:
            ModelError: the model has no encoder for `modality`; `x` has the wrong width, is not
                numeric, or holds NaN or Inf.
            RuntimeError: neither `fit` nor `DRCL.load` has run.

        See Also:
            The class's example, which encodes the test split's pix rows.
        """
        return self.model.encode(modality, x, preprocessed)

    def search(self, queries: ArrayLike, query_modality: int | str, gallery: ArrayLike,
               gallery_modality: int | str | None = None, k: int = 10,
               **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` gallery items nearest to each query in the shared space, best first (`TrainedModel.search`).

        Args:
            queries: (Q, d) rows of `query_modality`.
            query_modality: its name or index.
            gallery: (N, d') rows of `gallery_modality`, or a GalleryIndex made by this model.
            gallery_modality: the gallery rows' modality (not needed with an index).
            k: how many items per query.
            **options: `backend` ("auto", "torch", "cpp", "triton"), `max_memory` (bytes for one
                chunk's working set), `preprocessed` (rows already as `load_dataset` returns them).

        Returns:
            (scores (Q, k) float32 cosine similarities, indices (Q, k) int64 gallery rows), ranked
            by score with ties broken by the lower gallery index, the order MAP ranks in.

        Raises:
            ModelError: a modality the model has no encoder for, bad rows, or an index made by another model.
            ConfigError: k outside 1..N.
            BackendError: a backend that cannot run here.
            RuntimeError: neither `fit` nor `DRCL.load` has run.

        See Also:
            The class's example, which searches the fou rows for pix queries.
        """
        return self.model.search(queries, query_modality, gallery, gallery_modality, k, **options)

    def _fitted(self) -> FitResult:
        if self.result is None:
            raise RuntimeError("call .fit(data) first")
        return self.result
