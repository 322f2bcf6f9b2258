"""`drcl_fast.serving.export`: .pt2 and .onnx encoders that serve without drcl_fast, and `drcl-fast export`.

Every exported output is compared with `TrainedModel.encode` elementwise within TOLERANCE: the rows are
unit vectors, so every element is at most 1 and float32 rounding moves it by a few ulps of 1 (the file
standardises in float32 where `encode` does in float64, and onnxruntime sums in its own order). A
wrong weight, a missing or doubled standardisation, or a fixed batch size misses by far more.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drcl_fast.data.container import Standardisation
from drcl_fast.errors import ConfigError, ModelError, OutputExistsError
from drcl_fast.model import seeded_encoder
from drcl_fast.serving import export
from drcl_fast.serving.model_folder import ModalityEntry, TrainedModel, model_of_run

# Odd sizes, so that no width is a multiple of a kernel's tile.
WIDTH, HIDDEN, OUTPUT, CLASSES = 37, 64, 16, 7
TEXT_WIDTH = 23
TOLERANCE = 8 * float(np.finfo(np.float32).eps)
BATCHES = (1, 257)


def small_model() -> TrainedModel:
    """Two trained modalities ("image" standardised, "text" used as read) and an untrained "audio"."""
    rng = np.random.default_rng(0)
    states = {0: seeded_encoder(WIDTH, HIDDEN, OUTPUT, 1).state_dict(),
              1: seeded_encoder(TEXT_WIDTH, HIDDEN, OUTPUT, 2).state_dict()}
    entries = {0: ModalityEntry(0, "image", WIDTH), 1: ModalityEntry(1, "text", TEXT_WIDTH)}
    standardisation = Standardisation(rng.normal(3.0, 2.0, WIDTH), rng.uniform(0.5, 4.0, WIDTH))
    prior = torch.from_numpy(rng.standard_normal((OUTPUT, CLASSES)).astype(np.float32))
    return model_of_run("toy", ["image", "text", "audio"], states, entries, prior, [standardisation, None, None])


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    return small_model()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model) -> Path:
    return model.save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module", params=[(fmt, include) for fmt in ("pt2", "onnx") for include in (True, False)],
                ids=lambda p: f"{p[0]}-{'raw' if p[1] else 'standardised'}")
def exported(request, tmp_path_factory, model) -> tuple[Path, bool]:
    """The image encoder exported once per format, with and without its standardisation."""
    fmt, include = request.param
    path = tmp_path_factory.mktemp("export") / f"image.{fmt}"
    assert export.export_encoder(model, "image", path, include_preprocessing=include) == path
    return path, include


def rows(model: TrainedModel, n: int, raw: bool, seed: int) -> np.ndarray:
    """Rows like the training data: around the standardisation's statistics when raw."""
    x = np.random.default_rng(seed).standard_normal((n, WIDTH))
    if raw:
        x = model.preprocessing[0].mean + model.preprocessing[0].scale * x
    return x.astype(np.float32)


def assert_matches_encode(model: TrainedModel, x: np.ndarray, embeddings: np.ndarray, raw: bool) -> None:
    expected = model.encode("image", x, preprocessed=not raw).numpy()
    assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape
    np.testing.assert_allclose(embeddings, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("batch", BATCHES)
def test_exported_file_matches_encode_at_any_batch(model, exported, batch):
    path, include = exported
    x = rows(model, batch, raw=include, seed=batch)
    assert_matches_encode(model, x, export.run_exported(path, x), raw=include)


def test_file_without_preprocessing_differs_on_raw_rows(model, exported):
    # The standardisation is in the file exactly when asked for: raw rows through the other file miss by far.
    path, include = exported
    x = rows(model, 8, raw=True, seed=3)
    difference = np.abs(export.run_exported(path, x) - model.encode("image", x).numpy()).max()
    assert (difference <= TOLERANCE) == include and (include or difference > 1e-2)


@pytest.mark.parametrize("exported", [("onnx", True), ("onnx", False)], indirect=True,
                         ids=["onnx-raw", "onnx-standardised"])
def test_onnx_file_is_valid_and_named(exported):
    import onnx
    path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["embeddings"]
    batch, width = proto.graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and not batch.dim_value and width.dim_value == WIDTH
    assert {o.domain: o.version for o in proto.opset_import}[""] == export.ONNX_OPSET


# Runs an exported file where drcl_fast is never imported: argv = runner, file, input .npy, output .npy.
SERVE_ELSEWHERE = """
import sys
import numpy as np
runner, path, given, out = sys.argv[1:]
x = np.load(given)
if runner == "onnxruntime":
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = session.run(["embeddings"], {"features": x})[0]
else:
    import torch
    y = torch.export.load(path).module()(torch.from_numpy(x)).detach().numpy()
assert "drcl_fast" not in sys.modules, "drcl_fast was imported"
np.save(out, y)
"""


def test_exported_file_serves_without_drcl_fast(model, exported, tmp_path):
    path, include = exported
    x = rows(model, 257, raw=include, seed=5)
    np.save(tmp_path / "x.npy", x)
    runner = "onnxruntime" if path.suffix == ".onnx" else "torch"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SERVE_ELSEWHERE, runner, str(path), str(tmp_path / "x.npy"),
                             str(tmp_path / "y.npy")], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_matches_encode(model, x, np.load(tmp_path / "y.npy"), raw=include)


def test_export_writes_nothing_else(model, tmp_path):
    export.export_encoder(model, "text", tmp_path / "text.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.pt2"]   # no temporary file left behind


def test_modality_by_index_and_without_standardisation(model, tmp_path):
    path = export.export_encoder(model, 1, tmp_path / "text.pt2")
    x = np.random.default_rng(6).standard_normal((9, TEXT_WIDTH)).astype(np.float32)
    np.testing.assert_allclose(export.run_exported(path, x), model.encode("text", x).numpy(), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name, fmt", [("image.bin", None), ("image", None), ("image.onnx", "pt2"),
                                       ("image.pt2", "torchscript")])
def test_bad_format_or_suffix(model, tmp_path, name, fmt):
    with pytest.raises(ConfigError, match="pt2|onnx"):
        export.export_encoder(model, "image", tmp_path / name, fmt)
    assert not any(tmp_path.iterdir())


def test_explicit_format_names_a_file_without_suffix(model, tmp_path):
    path = export.export_encoder(model, "text", tmp_path / "text.model", format="pt2")
    assert export.check_export(model, "text", path, format="pt2") <= TOLERANCE


@pytest.mark.parametrize("modality", ["video", "audio", 5])
def test_unknown_or_untrained_modality(model, tmp_path, modality):
    with pytest.raises(ModelError, match="image"):    # the message lists the modalities the model has
        export.export_encoder(model, modality, tmp_path / "x.pt2")


def test_onnx_without_its_packages_names_the_extra(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)   # find_spec then reports it missing
    with pytest.raises(ConfigError, match=r'pip install "drcl_fast\[onnx\]"'):
        export.export_encoder(model, "image", tmp_path / "image.onnx")
    assert not any(tmp_path.iterdir())


def test_onnx_refuses_weights_beyond_one_file(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "ONNX_MAX_BYTES", 4 * WIDTH * HIDDEN)   # the first layer alone fills it
    with pytest.raises(ConfigError, match=r"\.pt2 instead"):
        export.export_encoder(model, "image", tmp_path / "image.onnx")
    assert not any(tmp_path.iterdir())


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export.add_export_flags(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_checks_and_prints_one_line(model, model_dir, tmp_path, capsys):
    out = tmp_path / "image.onnx"
    assert export.run_export(parse("--model", str(model_dir), "--modality", "image", "--out", str(out))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out}: ") and "onnxruntime" in lines[0]
    assert float(lines[0].rsplit(" ", 1)[1]) <= TOLERANCE
    x = rows(model, 4, raw=True, seed=7)
    assert_matches_encode(model, x, export.run_exported(out, x), raw=True)


def test_cli_index_format_no_preprocessing_no_check(model, model_dir, tmp_path, capsys):
    out = tmp_path / "image.bin"
    args = parse("--model", str(model_dir), "--modality", "0", "--out", str(out), "--format", "pt2",
                 "--no_preprocessing", "--no-check")
    assert export.run_export(args) == 0
    line = capsys.readouterr().out.strip()
    assert "standardised rows" in line and "checked" not in line
    x = rows(model, 4, raw=False, seed=8)
    assert_matches_encode(model, x, export.run_exported(out, x, format="pt2"), raw=False)


def test_cli_refuses_an_existing_file_unless_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "text.pt2"
    out.write_bytes(b"keep me")
    argv = ("--model", str(model_dir), "--modality", "text", "--out", str(out))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export.run_export(parse(*argv))
    assert out.read_bytes() == b"keep me"
    assert export.run_export(parse(*argv, "--overwrite")) == 0
    assert out.read_bytes() != b"keep me" and "checked with torch.export.load" in capsys.readouterr().out


def test_cli_check_fails_on_a_file_that_disagrees(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "run_exported", lambda path, x, format=None: np.zeros((len(x), OUTPUT), np.float32))
    with pytest.raises(ModelError, match="does not reproduce"):
        export.run_export(parse("--model", str(model_dir), "--modality", "text", "--out", str(tmp_path / "t.pt2")))


def test_cli_unknown_modality_and_missing_model(model_dir, tmp_path):
    with pytest.raises(ModelError, match="not in this model"):
        export.run_export(parse("--model", str(model_dir), "--modality", "audio", "--out", str(tmp_path / "a.pt2")))
    with pytest.raises(ModelError, match="not a model folder"):
        export.run_export(parse("--model", str(tmp_path / "nowhere"), "--modality", "image",
                                "--out", str(tmp_path / "a.pt2")))
    assert not any(p.suffix == ".pt2" for p in tmp_path.iterdir())


def test_cli_flags_are_required():
    with pytest.raises(SystemExit):
        parse("--model", "m", "--modality", "image")
