"""Training configuration: one dataclass, per-dataset presets, released-flag mapping."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from drcl_fast.errors import ConfigError

# The released main.py's --lr default; the released code indexes it by view.
RELEASED_LR = (6e-6, 5e-3, 8e-4, 3e-3, 4e-4)

# The released code's dataset names: with no --lr they keep the released behaviour (the published
# rates of wiki and xmedia, PRESETS; the released list above, indexed by view, for the others).
RELEASED_DATASETS = ("wiki", "xmedia", "xmedianet", "nus", "INRIA-Websearch")

PRIOR_CHOICES = ("spl", "file", "w0")

# Every precision name, with what it means (drcl_fast/runtime/precision.py applies them): the CLI's
# choices and help come from here.
PRECISIONS = {
    "fp32": "float32 products (the released behaviour)",
    "tf32": "TensorFloat-32 tensor cores, float32 accumulation (GPUs only)",
    "bf16": "bfloat16 operands, float32 accumulation (GPUs, and CPUs with AVX512-BF16 or AMX)",
}
DEFAULT_PRECISION = "fp32"

# How --lr auto ranks candidate rates (drcl_fast/training/lr_search.py).
CRITERIA = ("val_loss", "val_map")
DEFAULT_CRITERION = "val_loss"


AUTO = "auto"   # a setting the package picks: `lr` (searched), `concurrent_units` (for the device)

# The RSC rate of every modality of data with no published rates (a --data_path container, a
# MultiModalData of another name): searched on the data, as `--lr auto`. No one rate trained well on
# every data set measured (docs/lr_search.md, "A default for other data"); a number here, e.g. 1e-3,
# would make it that rate.
DEFAULT_LR: float | str = AUTO


@dataclass
class DRCLConfig:
    """Everything one DRCL run depends on. Names follow the released flags.

    `prior` says where the frozen prior W of RSC comes from: "spl" learns it
    (the released `--wselect True`), "file" reads `PriorW/W_{D}X{C}{dataset}.mat`
    under `out` (`--wselect False`), "w0" uses the random orthogonal W0 (the
    paper's "without SPL" ablation), any other string is a path to a .mat/.npy/.pt
    file holding a D x C matrix.
    """

    datasets: str = "wiki"
    # RSC rate: one per modality ("auto": searched), or one number or "auto" for every modality;
    # None: the dataset's published rates, else the released list (released names), else DEFAULT_LR (searched).
    lr: list[float | str] | float | str | None = None
    lr_SPL: float = 5e-4
    prior: str = "spl"
    batch_size: int = 1024
    output_shape: int = 2048               # D; -1 means D = number of classes (released)
    hidden_shape: int = 4096               # H
    alpha: float = 0.1                     # J_D weight
    beta: float = 0.1                      # J_MSE weight
    eta: float = 1.0                       # J_L weight
    gamma: float = 0.9                     # Mixup coefficient; 1 disables FA
    view_id: int = -1                      # >= 0: run RSC for this modality only
    epochs: int = 200
    spl_epochs: int | None = None          # None: the released code's choice, `epochs`
    sample_interval: int = 1
    seed: int = 1
    released_prior_slip: bool = False      # True: keep the final-epoch W_k as the released code does
    backend: str = "auto"
    device: str = "auto"
    data_root: str = "datasets"
    data_path: str | None = None           # a generic .npz/.h5/.mat container instead of a named dataset
    out: str = "."
    overwrite: bool = False
    quiet: bool = False
    checkpoint_every: int | None = None    # epochs between checkpoints; None: about once a minute; 0: none
    resume: bool = False                   # continue from the checkpoint of an interrupted run
    deterministic: bool = False            # deterministic GPU kernels (CPU runs are always reproducible)
    precision: str = DEFAULT_PRECISION     # the encoders' matrix precision: fp32, tf32, bf16 (drcl_fast.runtime.precision)
    concurrent_units: int | str = "auto"   # modalities trained at once in this process (units.units_at_once)
    lr_criterion: str = DEFAULT_CRITERION       # what --lr auto ranks rates by: "val_loss" or "val_map"
    extra: dict[str, Any] = field(default_factory=dict)  # released flags with no effect here

    @classmethod
    def preset(cls, dataset: str, **overrides: Any) -> "DRCLConfig":
        """The published settings for `dataset` (PRESETS; docs/design.md section 1), then `overrides`."""
        base = {**PRESETS.get(dataset, {}), **overrides}
        return cls(datasets=dataset, **base)

    def learning_rates(self, num_modalities: int) -> list[float | str]:
        """One RSC rate per modality ("auto": searched); `rate_sources` says where each comes from."""
        return [rate for rate, _ in self.rate_sources(num_modalities)]

    def rate_sources(self, num_modalities: int) -> list[tuple[float | str, str]]:
        """(rate, where it comes from) per modality: `lr` (one value for all, or one per modality),
        else for the released dataset names their published rates or the released default list
        (indexed by view, as there), else DEFAULT_LR for every modality ("auto": searched)."""
        k = num_modalities
        if isinstance(self.lr, (str, int, float)) and not isinstance(self.lr, bool):
            return [(self.lr, "--lr auto (searched)" if self.lr == AUTO else "--lr (one value for every modality)")] * k
        if self.lr is not None:
            preset = PRESETS.get(self.datasets, {}).get("lr")
            if preset is not None and list(self.lr) == list(preset):
                what = f"published for {self.datasets}" if self.datasets in RELEASED_DATASETS \
                    else f"the {self.datasets} preset"
                return [(lr, what) for lr in self.lr]
            return [(lr, "--lr auto (searched)" if lr == AUTO else "--lr") for lr in self.lr]
        if self.datasets in RELEASED_DATASETS:
            if k > len(RELEASED_LR):
                raise ConfigError(f"{self.datasets!r} has {k} modalities and no published learning rates; "
                                  f"pass --lr with one rate for every modality, or one per modality")
            return [(lr, f"the released default list (no rates published for {self.datasets})")
                    for lr in RELEASED_LR[:k]]
        searched = " (searched)" if DEFAULT_LR == AUTO else ""
        return [(DEFAULT_LR, f"default for data without published rates{searched}")] * k

    @property
    def spl_epoch_count(self) -> int:
        return self.epochs if self.spl_epochs is None else self.spl_epochs

    def replace(self, **changes: Any) -> "DRCLConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "wiki": dict(epochs=200, lr=[6e-6, 5e-3]),
    "xmedia": dict(epochs=300, lr=[8e-4, 3e-4, 8e-4, 3e-3, 4e-4]),
    # Learning rates for these three are not published: the released default list applies.
    "xmedianet": dict(epochs=100),
    "nus": dict(epochs=100),
    "INRIA-Websearch": dict(epochs=100),
    # CPU-sized run on the bundled data (make demo): smaller encoders, batches and epochs,
    # chosen by validation MAP among a handful of sizes (tools/mfeat_baseline.py gives the bar).
    "mfeat": dict(epochs=40, batch_size=140, output_shape=512, hidden_shape=1024,
                  lr=[1e-3] * 6),
}
