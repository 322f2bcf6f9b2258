"""The encoder GEMM's configurations (kernels/matmul.py): what the launcher keeps fits and compiles for sm_80 (A100)
and sm_90 (H100/H200), the prune drops exactly what cannot launch, nothing kept spills on sm_90, and ``row_sq``
gains each row's sum of squares, also through the autotuner.

The compile checks need no GPU: Triton compiles for a GPU target ahead of time (ptxas ships with the wheel). They
run in a subprocess, since under TRITON_INTERPRET=1 the kernel is not compilable.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from tests.support import HAVE_TRITON, REPO, generator

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")

if HAVE_TRITON:
    import triton

    from drcl_fast.kernels import matmul as mm
    from tests.kernels import gemm_aot as aot

# (dtype, tl.dot precision) of every kind of operands: float32 in TF32, in bf16, strict (FMA); float64
KINDS = {"tf32": (torch.float32, "tf32"), "bf16": (torch.float32, "bf16"), "ieee": (torch.float32, "ieee"),
         "fp64": (torch.float64, "ieee")}
ARCHS = (80, 90)
# The configurations before issue 10: every one needs >= 196,608 B for float64 gated (the A100 has 166,912).
OLD_SHAPES = [(128, 128, 32, 4, 4), (128, 256, 32, 8, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4),
              (128, 128, 64, 8, 3), (64, 64, 64, 4, 3)]

_COMPILE = r"""
import json, sys, torch
from drcl_fast.kernels import matmul as mm
from tests.kernels import gemm_aot as aot
kinds = {"tf32": (torch.float32, "tf32"), "bf16": (torch.float32, "bf16"), "ieee": (torch.float32, "ieee"),
         "fp64": (torch.float64, "ieee")}
out = []
for kind, arch in json.loads(sys.argv[1]):
    dtype, precision = kinds[kind]
    gated_kept = mm.kept_configs(dtype, precision, True, arch)
    for config in mm.CONFIGS[mm.config_kind(dtype, precision)]:
        if not mm.fits(config, dtype, precision, False, arch):
            out.append(dict(kind=kind, arch=arch, config=str(config), site=None))
            continue
        site = "linear_relu dx" if config in gated_kept else "linear_relu forward"   # the larger one kept
        k = aot.compile_aot(config, dtype, precision, arch, site)
        regs, spills = aot.ptxas_usage(k, arch) if arch >= 90 else (None, None)
        out.append(dict(kind=kind, arch=arch, config=str(config), site=site, shared=k.metadata.shared,
                        estimate=mm.smem_estimate(config, dtype, precision, site == "linear_relu dx", arch),
                        regs=regs, spills=spills))
for kind in kinds:                     # the first-choice configuration of each kind at every call site, sm_90
    dtype, precision = kinds[kind]
    config = mm.kept_configs(dtype, precision, True, 90)[0]
    for site in aot.CALL_SITES:
        regs, spills = aot.ptxas_usage(aot.compile_aot(config, dtype, precision, 90, site), 90)
        out.append(dict(kind=kind, arch=90, config=str(config), site=site, default=True, regs=regs, spills=spills))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """Every configuration of every kind, compiled for sm_80 and sm_90 at the largest call site it is kept for
    (the gated backward GEMM, else the forward), registers and spills on sm_90; then each kind's first choice at
    all six call sites on sm_90. About 60 compiles (some 50 s on a free core; seconds from Triton's cache)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1")
    jobs = json.dumps(list(itertools.product(KINDS, ARCHS)))
    run = subprocess.run([sys.executable, "-c", _COMPILE, jobs], env=env, capture_output=True, text=True,
                         timeout=600, cwd=str(REPO))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_kept_configuration_compiles_within_the_arch_and_the_estimate_bounds_it(compiled):
    kept = [r for r in compiled if r["site"] is not None and not r.get("default")]
    assert {(r["kind"], r["arch"]) for r in kept} == set(itertools.product(KINDS, ARCHS))
    for r in kept:
        assert r["shared"] <= mm.ARCH_SMEM[r["arch"]], r
        assert r["estimate"] >= r["shared"], r   # the prune may never keep what cannot launch
        assert r["estimate"] <= 1.5 * r["shared"], r   # nor drop much that could


def test_nothing_kept_spills_on_sm90(compiled):
    """At aligned (production) shapes: every kept configuration at its largest call site, and each kind's first
    choice at every call site. (Odd sizes lose the divisibility specialisation: up to 60 B on sm_90, docs/kernels.md.)"""
    checked = [r for r in compiled if r["site"] is not None and r["arch"] == 90]
    assert sum(1 for r in checked if r.get("default")) == len(KINDS) * len(aot.CALL_SITES)
    for r in checked:
        assert r["spills"] == 0, r
        assert r["regs"] <= 255, r


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gated", [False, True])
def test_the_prune_drops_exactly_what_does_not_fit(monkeypatch, kind, arch, gated):
    """prune_configs on a (faked) CUDA device of `arch` keeps exactly the kind's configurations that fit it."""
    dtype, precision = KINDS[kind]
    monkeypatch.setattr(mm, "_device_limits", lambda index: (arch, mm.ARCH_SMEM[arch]))
    every = list(dict.fromkeys(c for configs in mm.CONFIGS.values() for c in configs))
    a = types.SimpleNamespace(dtype=dtype, device=torch.device("cuda", 0))
    kept = mm.prune_configs(every, {"a_ptr": a}, PRECISION=precision, GATED=gated, grid=None, warmup=False)
    own = mm.CONFIGS[mm.config_kind(dtype, precision)]
    want = [c for c in own if mm.smem_estimate(c, dtype, precision, gated, arch) <= mm.ARCH_SMEM[arch]]
    assert kept == want == mm.kept_configs(dtype, precision, gated, arch)
    assert kept, "at least one configuration must launch"
    dropped = [c for c in own if c not in kept]
    assert all(mm.smem_estimate(c, dtype, precision, gated, arch) > mm.ARCH_SMEM[arch] for c in dropped)


def test_float64_gated_keeps_configurations_on_an_a100_where_the_old_ones_all_failed():
    old = [mm._cfg(*shape) for shape in OLD_SHAPES]
    assert all(mm.smem_estimate(c, torch.float64, "ieee", True, 80) >= 196_608 for c in old)
    assert not [c for c in old if mm.fits(c, torch.float64, "ieee", True, 80)]
    assert len(mm.kept_configs(torch.float64, "ieee", True, 80)) >= 2


def test_the_prune_fits_cpu_tensors_compiled_for_the_current_device(monkeypatch):
    """tools/kernel_matrix.py captures launches of CPU tensors, not interpreted, under a fake CUDA device."""
    monkeypatch.setattr(mm, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(mm, "_device_limits", lambda index: (80, mm.ARCH_SMEM[80]))
    a = torch.zeros(1, dtype=torch.float32)
    kept = mm.prune_configs(mm.CONFIGS["tc"], {"a_ptr": a}, PRECISION="tf32", GATED=True)
    assert kept == mm.kept_configs(torch.float32, "tf32", True, 80) and len(kept) < len(mm.CONFIGS["tc"])
    monkeypatch.setattr(mm, "INTERPRET", True)        # the interpreter: no limit, the kind only
    assert mm.prune_configs(mm.CONFIGS["tc"] + mm.CONFIGS["fp64"], {"a_ptr": a}, PRECISION="tf32",
                            GATED=True) == mm.CONFIGS["tc"]


def test_the_prune_raises_where_nothing_fits(monkeypatch):
    monkeypatch.setattr(mm, "_device_limits", lambda index: (80, 1024))
    a = types.SimpleNamespace(dtype=torch.float64, device=torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match="no GEMM configuration fits 1024 B"):
        mm.prune_configs(mm.CONFIGS["fp64"], {"a_ptr": a}, PRECISION="ieee", GATED=True)


def test_the_autotune_key_holds_what_changes_the_best_configuration():
    for name in ("M", "N", "K", "HAS_BIAS", "RELU", "GATED", "ROW_SQ", "PRECISION", "ACC", "A_K_CONTIG", "B_N_CONTIG"):
        assert name in mm.AUTOTUNE_KEY


# ---- row_sq ----------------------------------------------------------------------------------------------------

def _operands(m: int = 37, k: int = 45, n: int = 29):
    a = torch.randn(m, k, generator=generator(1), dtype=torch.float64)
    b = torch.randn(k, n, generator=generator(2), dtype=torch.float64)
    start = torch.rand(m, generator=generator(3), dtype=torch.float64) + 1.0
    return a, b, start


def test_row_sq_gains_each_rows_sum_of_squares():
    """The fixed configuration the interpreter runs: what row_sq held is kept."""
    a, b, start = _operands()
    row_sq = start.clone()
    out = mm.matmul(a, b, row_sq=row_sq)
    torch.testing.assert_close(row_sq, start + (a @ b).square().sum(dim=1), rtol=1e-12, atol=1e-12)
    mm.matmul(a, b, row_sq=row_sq)
    torch.testing.assert_close(row_sq, start + 2 * out.square().sum(dim=1), rtol=1e-12, atol=1e-12)


def _fake_bench():
    times = itertools.count(3.0, -1.0)   # later configurations "faster": the pick is not the first

    def bench(kernel_call, quantiles):
        kernel_call()
        kernel_call()                    # several runs per configuration, as do_bench does
        t = next(times)
        return [t, t, t]
    return bench


def _interpreted_kernel():
    if not mm.INTERPRET:
        pytest.skip("builds the autotuner around the interpreted kernel (TRITON_INTERPRET=1)")
    return mm._matmul_kernel


def test_row_sq_gains_through_the_autotuner(monkeypatch):
    """The launcher's autotuner, built around the interpreted kernel with a fake timer: its benchmark runs of two
    configurations must leave row_sq as they found it, on the tuning call and on later ones."""
    launcher = mm.make_launcher(_interpreted_kernel(), configs=mm.CONFIGS["fp64"][2:], do_bench=_fake_bench())
    monkeypatch.setattr(mm, "_launch", launcher)
    monkeypatch.setattr(mm, "_FIXED", {})
    a, b, start = _operands()
    for call in range(2):
        row_sq = start.clone()
        out = mm.matmul(a, b, row_sq=row_sq)
        torch.testing.assert_close(out, a @ b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(row_sq, start + out.square().sum(dim=1), rtol=1e-12, atol=1e-12)
        if call == 0:
            assert len(launcher.configs_timings) == 2 and launcher.best_config == mm.CONFIGS["fp64"][3]


def test_reset_to_zero_would_wipe_row_sq(monkeypatch):
    """The control: the former ``reset_to_zero=["sq_ptr"]`` loses what row_sq held on the tuning call."""
    launcher = triton.autotune(mm.CONFIGS["fp64"][2:], key=mm.AUTOTUNE_KEY, reset_to_zero=["sq_ptr"],
                               do_bench=_fake_bench())(_interpreted_kernel())
    monkeypatch.setattr(mm, "_launch", launcher)
    monkeypatch.setattr(mm, "_FIXED", {})
    a, b, start = _operands()
    row_sq = start.clone()
    out = mm.matmul(a, b, row_sq=row_sq)
    torch.testing.assert_close(row_sq, out.square().sum(dim=1), rtol=1e-12, atol=1e-12)   # start is gone
