"""--precision: the bf16 step against autograd under torch.autocast, the switch's checks, and bf16 runs.

This CPU may lack native bf16 instructions, where torch emulates bf16 products (correct, slow): the
probe is mocked so that the bf16 paths run at small sizes here; the speed is measured in
bench/cpu/train_cpu.py --precision on a CPU that has them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from drcl_fast import DRCL, DRCLConfig, ops
from drcl_fast.errors import CheckpointError, ConfigError
from drcl_fast.model import seeded_encoder
from drcl_fast.ops import reference
from drcl_fast.runtime import precision
from drcl_fast.runtime.floor import Floor
from drcl_fast.serving import load_model
from drcl_fast.training import rsc, spl
from drcl_fast.training.encoder_step import EncoderStep
from drcl_fast.training.trainer import fit
from tests.support import REPO
from tests.training.test_encoder_step import step_batch
from tests.training.test_resume import fit_interrupted

B, D_IN, H, D, C = 37, 19, 65, 33, 5
LOSS_BY_HAND_ROWS = 301
# As tests/training/test_encoder_step.py bounds float32 (2e-6, about 16 float32 epsilons of the largest entry).
BF16_TOLERANCE = 16 * torch.finfo(torch.bfloat16).eps


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU taken for one with native bf16 (the products then run as torch runs them here)."""
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: "AVX512-BF16")


def _autocast_unit_rows(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference: the encoder's layers under torch.autocast, normalised in float32."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder.head(encoder.body(x))
    z = z.float()
    return z / z.norm(dim=1, keepdim=True)


def test_a_bf16_encoder_forward_is_autocasts() -> None:
    x = torch.randn(B, D_IN)
    low = seeded_encoder(D_IN, H, D, 3, compute_dtype=torch.bfloat16)
    with torch.no_grad():
        got = low(x)
        assert got.dtype == torch.float32
        assert torch.equal(got, _autocast_unit_rows(seeded_encoder(D_IN, H, D, 3), x))
        # and not float32's: bf16 products round
        assert not torch.equal(got, seeded_encoder(D_IN, H, D, 3)(x))


def _reference_grads(phase: str, batch: dict, q: float, s: rsc.RSCSettings) -> tuple[float, list[torch.Tensor]]:
    encoder = seeded_encoder(D_IN, H, D, 3)
    unit = _autocast_unit_rows(encoder, batch["x"])
    if phase == "rsc":
        mixed = ops.mix_rows(unit, s.gamma, batch["permutation"])
        terms = reference.drcl_loss_terms(mixed, ops.mix_rows(batch["targets"], s.gamma, batch["permutation"]),
                                          mixed @ batch["prior"], batch["pinv"], q)
        loss = rsc.objective(terms, s)
        params = list(encoder.parameters())
    else:
        prior = torch.nn.Parameter(batch["prior"].clone())
        loss = reference.gce_loss(unit @ prior, batch["targets"], q)
        params = [*encoder.parameters(), prior]
    loss.backward()
    return loss.item(), [p.grad for p in params]


def _closed_form_grads(phase: str, batch: dict, q: float, s: rsc.RSCSettings, native: bool
                       ) -> tuple[float, list[torch.Tensor]]:
    encoder = seeded_encoder(D_IN, H, D, 3, compute_dtype=torch.bfloat16)
    step = EncoderStep(encoder)
    if not native:
        step.native_rsc = step.native_spl = lambda *args: None
    if phase == "rsc":
        rsc_step = rsc.RSCStep(encoder, step, batch["prior"], batch["pinv"], s, batch["targets"])
        loss, _ = rsc_step(batch["x"], batch["targets"], batch["permutation"], q)
        return loss.item(), [p.grad for p in encoder.parameters()]
    prior = torch.nn.Parameter(batch["prior"].clone())
    loss = spl.SPLStep(encoder, step, prior, "auto")(batch["x"], batch["targets"], q)
    return loss.item(), [p.grad for p in (*encoder.parameters(), prior)]


@pytest.mark.parametrize("native", [False, True], ids=["python-step", "cpp-step"])
@pytest.mark.parametrize("phase, rows", [("rsc", B), ("rsc", LOSS_BY_HAND_ROWS), ("spl", B)])
def test_the_bf16_closed_form_step_matches_autograd_under_autocast(phase: str, rows: int, native: bool) -> None:
    batch = step_batch(rows, D_IN, D, C, torch.float32)
    s = rsc.RSCSettings(lr=1e-3, epochs=1, batch_size=rows, hidden_dim=H, precision="bf16")
    loss, closed = _closed_form_grads(phase, batch, 0.5, s, native)
    loss_ref, wanted = _reference_grads(phase, batch, 0.5, s)
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)   # the loss is float32 on both sides
    for got, want in zip(closed, wanted, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert want.abs().max() > 0
        worst = (got - want).abs().max().item()
        assert worst <= BF16_TOLERANCE * want.abs().max().item(), worst


def test_the_bf16_step_differs_from_float32s_by_bf16_rounding_only() -> None:
    """Not float32 by mistake (the gradients differ), nor garbage (they agree to bf16's precision)."""
    batch = step_batch(LOSS_BY_HAND_ROWS, D_IN, D, C, torch.float32)
    s = rsc.RSCSettings(lr=1e-3, epochs=1, batch_size=LOSS_BY_HAND_ROWS, hidden_dim=H, precision="bf16")
    _, low = _closed_form_grads("rsc", batch, 0.5, s, native=True)
    encoder = seeded_encoder(D_IN, H, D, 3)
    rsc.RSCStep(encoder, EncoderStep(encoder), batch["prior"], batch["pinv"], s, batch["targets"])(
        batch["x"], batch["targets"], batch["permutation"], 0.5)
    for got, want in zip(low, (p.grad for p in encoder.parameters()), strict=True):
        relative = ((got - want).norm() / want.norm()).item()
        assert 0 < relative < 0.05, relative


@pytest.mark.parametrize("device, name, message", [
    ("cpu", "tf32", "needs a GPU's tensor cores"),
    ("cpu", "fp16", "unknown precision 'fp16'"),
])
def test_precisions_a_device_cannot_run_are_refused(device: str, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        precision.check_precision(name, device)


def test_bf16_is_refused_on_a_cpu_without_bf16_instructions(monkeypatch: pytest.MonkeyPatch, mfeat,
                                                           tmp_path) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    with pytest.raises(ConfigError, match="neither AVX512-BF16 nor AMX.*use --precision fp32"):
        precision.check_precision("bf16", "cpu")
    cfg = DRCLConfig.preset("mfeat", epochs=1, precision="bf16", out=str(tmp_path), quiet=True)
    with pytest.raises(ConfigError, match="no native bf16"):
        DRCL(cfg).fit(mfeat, progress=False)
    assert not any(tmp_path.iterdir())   # refused before anything was written


def test_the_probe_reads_torchs_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision.cpu_bf16_instructions() == "AVX512-BF16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert precision.cpu_bf16_instructions() is None
    precision.check_precision("fp32", "cpu")   # float32 runs everywhere


def test_the_cli_refuses_bf16_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    from drcl_fast import cli
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "--datasets", "mfeat", "--epochs", "1", "--precision", "bf16", "--out", str(tmp_path),
                  "--quiet"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--precision bf16" in err and "Traceback" not in err


def test_the_flag_accepts_only_known_names(capsys) -> None:
    from drcl_fast import cli
    with pytest.raises(SystemExit):
        cli.main(["train", "--datasets", "mfeat", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def _map_all(result) -> float:
    return result.metrics[0].mean


def test_a_short_bf16_run_trains_as_float32_does(bf16_cpu, mfeat, tiny_config) -> None:
    """The same seed at both precisions: the losses per epoch within 2 %, MAP@all within 0.02 (this run
    is short and small: the bars of docs/precision.md are for full runs), and the outputs float32."""
    runs = {name: fit(mfeat, tiny_config.replace(precision=name, out=f"{tiny_config.out}/{name}"), progress=False)
            for name in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert abs(_map_all(bf16) - _map_all(fp32)) <= 0.02, (_map_all(bf16), _map_all(fp32))
    for k in fp32.rsc:
        assert bf16.rsc[k].test_embeddings.dtype == np.float32
        assert not np.array_equal(bf16.rsc[k].test_embeddings, fp32.rsc[k].test_embeddings)
        for a, b in zip(bf16.rsc[k].history, fp32.rsc[k].history, strict=True):
            assert abs(a["J"] - b["J"]) <= 0.02 * abs(b["J"]), (a, b)
    assert bf16.floor.precision == "bf16" and bf16.floor.fp32_rate is not None
    assert "measured bf16 matrix-product speed" in bf16.floor.line() and "at its float32 rate" in bf16.floor.line()


def test_a_bf16_model_encodes_as_its_run_did(bf16_cpu, mfeat, tiny_config) -> None:
    """The model folder keeps the precision; loaded, it encodes the test split to the run's bits."""
    result = fit(mfeat, tiny_config.replace(precision="bf16", epochs=2), progress=False)
    model = load_model(f"{tiny_config.out}/model")
    assert model.precision == "bf16" and model.config["precision"] == "bf16"
    for k, name in enumerate(mfeat.modalities):
        got = model.encode(name, mfeat.test.features[k], preprocessed=True)
        assert got.dtype == torch.float32
        assert np.array_equal(got.numpy(), result.rsc[k].test_embeddings)


def test_a_bf16_model_encodes_in_float32_on_request_and_exports_float32(bf16_cpu, mfeat, tiny_config) -> None:
    from drcl_fast.serving.export import CHECK_TOLERANCE, check_export, export_encoder
    fit(mfeat, tiny_config.replace(precision="bf16", epochs=1), progress=False)
    model = load_model(f"{tiny_config.out}/model")
    x = mfeat.test.features[0][:50]
    low, high = (model.encode(0, x, preprocessed=True, precision=name) for name in (None, "fp32"))
    assert model.encoders[0].compute_dtype == torch.bfloat16   # the request did not change the model
    assert not torch.equal(low, high) and (low - high).abs().max() < 0.05
    path = export_encoder(model, 0, f"{tiny_config.out}/enc.pt2")
    assert check_export(model, 0, path) <= CHECK_TOLERANCE


def test_a_resumed_run_keeps_its_precision(bf16_cpu, mfeat, tiny_config, monkeypatch) -> None:
    """A bf16 run stopped part-way resumes only as bf16, and then ends as the uninterrupted bf16 run."""
    cfg = tiny_config.replace(precision="bf16", checkpoint_every=1, concurrent_units=1)
    calls = []
    fit_interrupted(mfeat, cfg, lambda: calls.append(1) or len(calls) > 10, monkeypatch)
    with pytest.raises(CheckpointError, match="precision: 'bf16' there, 'fp32' here"):
        fit(mfeat, cfg.replace(precision="fp32", resume=True), progress=False)
    resumed = fit(mfeat, cfg.replace(resume=True), progress=False)
    plain = fit(mfeat, cfg.replace(out=f"{cfg.out}-plain", checkpoint_every=0), progress=False)
    assert resumed.metrics[0].directions == plain.metrics[0].directions
    for k in plain.rsc:
        assert np.array_equal(resumed.rsc[k].test_embeddings, plain.rsc[k].test_embeddings)


def test_the_floor_line_names_the_precision_and_the_float32_floor() -> None:
    line = Floor(flops=7_950_000_000_000, rate=400e9, seconds=30.0, precision="bf16", fp32_rate=150e9).line()
    assert line == ("training took 30 s, 66 % of this CPU's measured bf16 matrix-product speed (its encoder "
                    "products, 7.95 TFLOP, need 19.9 s at the measured 400 GFLOP/s; 53.0 s at its float32 rate, "
                    "150 GFLOP/s)")


def test_a_float32_cpu_run_says_once_what_bf16_would_give_where_the_cpu_has_it(monkeypatch, mfeat,
                                                                              tiny_config) -> None:
    import logging
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: "AMX")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("drcl_fast")
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        fit(mfeat, tiny_config.replace(epochs=1), progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
    hints = [line for line in seen if "multiplies bf16 natively" in line]
    assert len(hints) == 1 and "(AMX)" in hints[0] and precision.BF16_MEASURED in hints[0]
    docs = REPO / "docs" / "precision.md"
    assert precision.BF16_MEASURED in " ".join(docs.read_text().split())   # the figures come from the docs
    assert precision.bf16_hint("bf16", "cpu") is None   # a bf16 run needs no hint
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    assert precision.bf16_hint("fp32", "cpu") is None   # nor a CPU without bf16
