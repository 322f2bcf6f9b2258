"""One modality's encoder as a file that serves without this package: `torch.export` (.pt2) or ONNX.

    drcl-fast export --model runs/x/model --modality image --out image.onnx
    drcl-fast export --model runs/x/model --modality text --out text.pt2 --no_preprocessing

The file maps raw rows (float32, (batch, d), any batch) to the unit embeddings (batch, D) that
`TrainedModel.encode` returns; where the loader standardised the modality, the standardisation is in
the file (unless left out). A .pt2 loads with `torch.export.load(path).module()` (torch alone); an
.onnx runs in onnxruntime or any ONNX runtime, its input named "features", its output "embeddings".
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from drcl_fast.data.container import Standardisation
from drcl_fast.errors import ConfigError, ModelError
from drcl_fast.model import Encoder, encoder_from_state
from drcl_fast.outputs import atomic_write, refuse_overwrite
from drcl_fast.serving.model_folder import TrainedModel, load_model

FORMATS = {".pt2": "pt2", ".onnx": "onnx"}
INPUT_NAME = "features"
OUTPUT_NAME = "embeddings"
# The exporter's own opset: every onnxruntime the `onnx` extra allows runs it, and so do most
# other ONNX runtimes of recent years.
ONNX_OPSET = 18
# A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB; the margin is for the graph.
ONNX_MAX_BYTES = 2**31 - 2**24
ONNX_EXTRA = 'pip install "drcl_fast[onnx]"'
# Rows `--check` runs through the exported file and through `model.encode`.
CHECK_ROWS = 16
# Largest elementwise difference `--check` accepts. Rows are unit vectors, so rounding gives
# differences of a few float32 ulps of 1 (larger only as summation orders differ over H-wide
# products); a wrong weight or a missing standardisation gives differences of the elements' own size.
CHECK_TOLERANCE = 1e-4
# Loggers of torch's exporters that report progress and optional ops (torchvision's) as warnings.
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")


class Standardise(nn.Module):
    """(x - mean) / scale per column, with the statistics as float32 buffers."""

    def __init__(self, standardisation: Standardisation) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.asarray(standardisation.mean, np.float32).copy()))
        self.register_buffer("scale", torch.from_numpy(np.asarray(standardisation.scale, np.float32).copy()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.scale


class ServingEncoder(nn.Module):
    """Raw rows of one modality -> its unit embeddings: the optional standardisation, then the encoder."""

    def __init__(self, encoder: Encoder, standardisation: Standardisation | None) -> None:
        super().__init__()
        self.preprocess = nn.Identity() if standardisation is None else Standardise(standardisation)
        self.encoder = encoder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.preprocess(features))


def serving_module(model: TrainedModel, modality: int | str, include_preprocessing: bool = True) -> nn.Module:
    """A CPU copy of one modality's encoder, taking the rows a user has: what `export_encoder` writes.

    With `include_preprocessing` and a standardised modality, the module applies (x - mean) / scale
    first, with the statistics as float32 buffers: it rounds in float32 where `TrainedModel.encode`
    standardises in float64, so its embeddings agree with `encode`'s within float32 rounding, not
    bit for bit. Without it (or for a modality used as read) it takes rows as the loader returned them.

    Args:
        model: a trained model (`load_model`, `DRCL.model`).
        modality: the name or index of one of its trained modalities.
        include_preprocessing: fold the modality's standardisation into the module.

    Returns:
        A module in eval mode mapping float32 (batch, d) rows to float32 (batch, D) unit rows.

    Raises:
        ModelError: the model has no encoder for `modality`.
    """
    k = model.modality_index(modality)
    state = {name: t.detach().cpu() for name, t in model.encoders[k].state_dict().items()}
    standardisation = model.preprocessing.get(k) if include_preprocessing else None
    return ServingEncoder(encoder_from_state(state), standardisation).eval()


def export_format(path: str | Path, format: str | None = None) -> str:
    """The export format of `path`: `format` where given, else its suffix's ("pt2" or "onnx").

    Raises:
        ConfigError: an unknown format, a suffix that names none, or one that names the other format.
    """
    suffix = Path(path).suffix.lower()
    if format is not None and format not in FORMATS.values():
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS.values())}")
    if format is None and suffix not in FORMATS:
        raise ConfigError(f"{path}: cannot tell the export format from the suffix {suffix or '(none)'!r}; "
                          f"name the file *.pt2 (torch.export) or *.onnx (ONNX), or pass the format")
    if suffix in FORMATS and format is not None and FORMATS[suffix] != format:
        raise ConfigError(f"{path} is named as a {FORMATS[suffix]} file but the format asked for is {format}; "
                          f"make the suffix .{format}")
    return format or FORMATS[suffix]


def export_encoder(model: TrainedModel, modality: int | str, path: str | Path, format: str | None = None,
                   include_preprocessing: bool = True) -> Path:
    """Write one modality's encoder to `path` for serving without drcl_fast (replacing any file there).

    Args:
        model: a trained model.
        modality: the name or index of one of its trained modalities.
        path: the file to write, *.pt2 (`torch.export`) or *.onnx.
        format: "pt2" or "onnx"; None reads it from the suffix.
        include_preprocessing: fold the modality's standardisation in (see `serving_module`), so the
            file takes raw rows; False: it takes rows already standardised.

    Returns:
        The path written. The batch dimension is dynamic (any size from 1); the width is the
        modality's. The file appears whole or not at all (written under a temporary name, then renamed).

    Raises:
        ConfigError: an unknown format or suffix; ONNX without its packages (the message names
            `pip install "drcl_fast[onnx]"`); an encoder too large for a single ONNX file.
        ModelError: the model has no encoder for `modality`.
    """
    path = Path(path)
    chosen = export_format(path, format)
    if chosen == "onnx":
        require_onnx("onnx", "onnxscript")
    k = model.modality_index(modality)
    module = serving_module(model, k, include_preprocessing)
    if chosen == "onnx":
        _check_onnx_size(module)
    example = torch.zeros(2, model.entries[k].input_dim)
    write = _write_pt2 if chosen == "pt2" else _write_onnx
    write(module, example, path)
    return path


def require_onnx(*modules: str) -> None:
    """Raise a ConfigError naming the `onnx` extra if any of `modules` is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export and its check need {', '.join(missing)}, not installed here: {ONNX_EXTRA}")


def _check_onnx_size(module: nn.Module) -> None:
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if size > ONNX_MAX_BYTES:
        raise ConfigError(f"this encoder's weights take {size / 2**30:.2f} GiB, more than one ONNX file holds "
                          f"(2 GiB); export it as .pt2 instead")


def _batch_dynamic() -> dict[str, dict[int, torch.export.Dim]]:
    # An example of two rows, not one: torch.export specialises sizes 0 and 1 unless told otherwise.
    return {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}}


def _write_pt2(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_exporter():
        program = torch.export.export(module, (example,), dynamic_shapes=_batch_dynamic())

    def save(tmp: Path) -> None:
        # An open file: given a name, torch.export.save wants it to end in .pt2, and the temporary one does not.
        with open(tmp, "wb") as handle:
            torch.export.save(program, handle)

    atomic_write(path, save)


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_exporter():
        program = torch.onnx.export(module, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=_batch_dynamic(),
                                    opset_version=ONNX_OPSET)
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hold back the exporters' progress lines and warnings; on an error, print what they said first."""
    said = io.StringIO()
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(said):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    except BaseException:
        sys.stderr.write(said.getvalue())
        raise
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_exported(path: str | Path, rows: np.ndarray, format: str | None = None) -> np.ndarray:
    """The embeddings an exported file gives for `rows`: torch.export.load for .pt2, onnxruntime for .onnx.

    Args:
        path: a file `export_encoder` wrote.
        rows: (n, d) rows, cast to float32.
        format: "pt2" or "onnx"; None reads it from the suffix.

    Returns:
        (n, D) float32 embeddings.

    Raises:
        ConfigError: an unknown format or suffix, or an .onnx file without onnxruntime installed.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if export_format(path, format) == "pt2":
        with _quiet_exporter():
            program = torch.export.load(str(path))
        with torch.no_grad():
            return program.module()(torch.from_numpy(rows)).numpy()
    require_onnx("onnxruntime")
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]


def check_export(model: TrainedModel, modality: int | str, path: str | Path, include_preprocessing: bool = True,
                 format: str | None = None, rows: int = CHECK_ROWS, seed: int = 0) -> float:
    """The largest elementwise difference between an exported file's embeddings and `model.encode`'s in float32.

    The rows are random, drawn around the modality's training statistics where it has them (so that a
    file that standardises and one that does not are told apart).

    Args:
        model, modality, include_preprocessing: as the file was exported.
        path: the exported file.
        format: "pt2" or "onnx"; None reads it from the suffix.
        rows: how many random rows.
        seed: their seed.

    Returns:
        The max abs difference over every element.

    Raises:
        ModelError: the model has no encoder for `modality`.
        ConfigError: an .onnx file without onnxruntime installed.
    """
    k = model.modality_index(modality)
    x = _random_rows(model, k, rows, seed, raw=include_preprocessing)
    # The file multiplies in float32 whatever the run's precision (docs/precision.md).
    expected = model.encode(k, x, preprocessed=not include_preprocessing, precision="fp32").cpu().numpy()
    return float(np.abs(run_exported(path, x, format=format) - expected).max())


def _random_rows(model: TrainedModel, k: int, rows: int, seed: int, raw: bool) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((rows, model.entries[k].input_dim))
    standardisation = model.preprocessing.get(k)
    if raw and standardisation is not None:
        noise = standardisation.mean + standardisation.scale * noise
    return noise.astype(np.float32)


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `drcl-fast export`."""
    source = parser.add_argument_group("what to export")
    source.add_argument("--model", required=True, metavar="DIR", help="a model folder (a run's --out/model)")
    source.add_argument("--modality", required=True, metavar="NAME",
                        help="the modality whose encoder to export: its name, or its index")
    source.add_argument("--no_preprocessing", "--no-preprocessing", action="store_true",
                        help="leave the modality's standardisation out: the file then takes rows already "
                             "standardised (default: it takes raw rows, as TrainedModel.encode does)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="FILE", help="the file to write: *.pt2 (torch.export) or *.onnx")
    out.add_argument("--format", choices=sorted(FORMATS.values()), default=None,
                     help="pt2 or onnx (default: from the --out suffix)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    out.add_argument("--check", dest="check", action="store_true", default=True,
                     help=f"after writing, run the file on {CHECK_ROWS} random rows (torch.export.load or "
                          f"onnxruntime) against the model's own encode and print the largest difference; "
                          f"above {CHECK_TOLERANCE:g} is an error (default: on)")
    out.add_argument("--no_check", "--no-check", dest="check", action="store_false", help="skip that check")


def run_export(args: argparse.Namespace) -> int:
    """`drcl-fast export`: write the file the flags ask for, check it, print one line for it.

    Returns:
        0.

    Raises:
        ConfigError: a bad --out suffix or --format; ONNX packages missing.
        OutputExistsError: --out exists and --overwrite is not given.
        ModelError: an unreadable model folder, an unknown modality, or an exported file that fails --check.
    """
    out = Path(args.out)
    chosen = export_format(out, args.format)
    refuse_overwrite([out], args.overwrite)
    if chosen == "onnx" and args.check:
        require_onnx("onnxruntime")
    model = load_model(args.model)
    k = model.modality_index(args.modality)
    include = not args.no_preprocessing
    export_encoder(model, k, out, chosen, include)
    line = f"wrote {out}: {_description(model, k, chosen, include)}"
    if args.check:
        line += "; " + _check_phrase(model, k, out, chosen, include)
    print(line)
    return 0


def _description(model: TrainedModel, k: int, chosen: str, include: bool) -> str:
    entry = model.entries[k]
    standardised = k in model.preprocessing
    takes = ("raw rows (standardisation included)" if standardised and include
             else "standardised rows" if standardised else "rows as read")
    return (f"{'torch.export' if chosen == 'pt2' else f'ONNX opset {ONNX_OPSET}'} encoder of modality "
            f"{entry.name!r}, {takes} of width {entry.input_dim} -> unit embeddings of width {model.output_dim}")


def _check_phrase(model: TrainedModel, k: int, out: Path, chosen: str, include: bool) -> str:
    """The check's result for the file's line; a difference above tolerance raises instead."""
    difference = check_export(model, k, out, include, chosen)
    runner = "torch.export.load" if chosen == "pt2" else "onnxruntime"
    if not difference <= CHECK_TOLERANCE:
        raise ModelError(f"{out} was written but does not reproduce the model: on {CHECK_ROWS} random rows, "
                         f"{runner} and TrainedModel.encode differ by up to {difference:.3g} (more than "
                         f"{CHECK_TOLERANCE:g}); do not serve it, and report this with the torch version "
                         f"({torch.__version__})")
    return (f"checked with {runner} on {CHECK_ROWS} random rows: max abs difference from "
            f"TrainedModel.encode {difference:.2g}")
