"""Every Triton kernel variant the launchers can launch compiles for real GPUs and fits them.

The interpreter the other kernel tests run under hides shared-memory limits, register
spills and argument specialisation. ``tools/kernel_matrix.py`` captures the launches
the launchers in ``kernels/`` make at the production and test shapes (nothing runs),
and compiles them ahead of time for sm_80 and sm_90 at every shape, and for sm_100 (where the
installed Triton targets it) at the production shapes' default configs, with the wheel's ptxas,
on the CPU (docs/kernel_resources.md). Checked per variant (kernel x specialisation x arch):

- ``capture``: every launcher could be called and its launches bound;
- ``compile``: every config the launcher would keep compiles;
- ``smem``: at least one kept config fits the arch's shared memory per block;
- ``spill``: the default (first-choice) config of a variant a production shape reaches
  stays within ``SPILL_BUDGET_BYTES`` of local memory per thread (kernel_matrix.py says why).

Cold, the matrix takes minutes on a 2-core machine (ptxas); Triton's on-disk cache
(TRITON_CACHE_DIR, default ~/.triton/cache) makes a rerun take seconds. Set
DRCL_KERNEL_MATRIX_CONFIGS=lazy to compile only each variant's default config (and the
next ones until one fits) for a quicker cold run, or =all for every kept config.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from tests.support import REPO


pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _load_matrix():
    spec = importlib.util.spec_from_file_location("kernel_matrix", REPO / "tools" / "kernel_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


km = _load_matrix()

ARCHS = ("sm_80", "sm_90", "sm_100")
REQUIRED_ARCHS = ("sm_80", "sm_90")   # A100, H100/H200; sm_100 (B200) where the installed Triton targets it
PER_ARCH = {"sm_100": km.QUICK_PLAN}   # sm_80 and sm_90 at every shape; sm_100 at the production shapes
CHECKS = ("capture", "compile", "smem", "spill")
KERNELS = ("_matmul_kernel", "_mix_project_fwd", "_mix_project_bwd", "_pair_kernel", "_mse_kernel",
           "_gce_kernel", "_topk_kernel", "_walk_kernel")
CONFIGS = os.environ.get("DRCL_KERNEL_MATRIX_CONFIGS", "prod-all")


@pytest.fixture(scope="module")
def matrix():
    t0 = time.perf_counter()
    results = km.run_matrix(ARCHS, shapes="prod,test", jobs=2, configs=CONFIGS, per_arch=PER_ARCH)
    c = km.counts(results)
    c["seconds"] = round(time.perf_counter() - t0, 1)
    fails = {arch: km.failures(r) for arch, r in results.items()}
    return results, fails, c


def _result(results: dict, arch: str) -> dict:
    r = results[arch]
    assert not r.get("worker_failed"), f"{arch}: the matrix worker failed:\n{r.get('log')}"
    if r.get("unknown"):
        if arch in REQUIRED_ARCHS:
            pytest.fail(r["unknown"])
        pytest.skip(r["unknown"])
    return r


def test_matrix_summary(matrix, capsys):
    _, fails, c = matrix
    with capsys.disabled():
        print(f"\ncompile matrix: {c['variants']} variants, {c['configs_compiled']} configs compiled "
              f"({c['configs_pruned']} pruned by the launchers), {c['archs']} archs, {c['launches']} launches "
              f"captured, {c['seconds']} s; failing checks: "
              + ", ".join(f"{a} {len(f)}" for a, f in fails.items()))
    assert set(fails) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_matrix_covers_every_kernel(matrix, arch):
    results, _, _ = matrix
    found = {v["kernel"] for v in _result(results, arch)["variants"]}
    assert set(KERNELS) <= found, f"{arch}: no launch captured for {sorted(set(KERNELS) - found)}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("check", CHECKS)
def test_every_variant_passes(matrix, check, arch):
    results, fails, _ = matrix
    _result(results, arch)
    new = [f for f in fails[arch] if f["check"] == check]
    assert not new, f"{len(new)} variant(s) fail the {check!r} check on {arch}:\n" + "\n".join(map(km.describe, new))


def test_failure_report_names_kernel_variant_and_arch():
    """The checks themselves, on a synthetic result: no compile needed."""
    v = {"kernel": "_k", "dtype": "float64", "precision": "ieee", "flags": {"BLOCK": 64}, "signature": {"x": "*fp64"},
         "attrs": {"x": [["tt.divisibility", 16]]}, "sites": ["launcher [prod f64]"],
         "configs": [{"config": {"num_warps": 4}, "unit": 0, "kept": True},
                     {"config": {"num_warps": 8}, "unit": 1, "kept": True},
                     {"config": {"num_warps": 2}, "unit": 2, "kept": False}]}
    units = [{"id": 0, "error": None, "shared": 300_000, "local": 4096, "regs": 255},
             {"id": 1, "error": None, "shared": 250_000, "local": 0, "regs": 128}]
    result = {"arch": "sm_90", "max_shared": 232_448, "capture_errors": [], "variants": [v], "units": units}
    checks = {f["check"]: f for f in km.failures(result)}
    assert set(checks) == {"smem", "spill"}
    assert "_k[float64 ieee BLOCK=64]" in km.describe(checks["smem"]) and "[sm_90]" in km.describe(checks["smem"])
    units[1]["shared"] = 1000
    assert {f["check"] for f in km.failures(result)} == {"spill"}
    v["sites"] = ["launcher [test f64]"]   # test shapes only: spills do not count
    assert km.failures(result) == []
    for e in v["configs"]:   # a prune hook that keeps nothing (or refuses): no config fits
        e["kept"] = False
    assert [f["check"] for f in km.failures(result)] == ["smem"]


def test_an_arch_this_triton_cannot_target_is_skipped_with_the_reason_unless_required():
    probe = ("import importlib.util; spec = importlib.util.spec_from_file_location('km', 'tools/kernel_matrix.py'); "
             "km = importlib.util.module_from_spec(spec); spec.loader.exec_module(km); "
             "km.ARCHS['sm_20'] = dict(km.ARCHS['sm_80'], capability=20); "
             "print(km.arch_unknown('sm_90')); print(km.arch_unknown('sm_20'))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()   # Triton also prints its PTX dump
    assert out[0] == "None"
    why = out[-1]
    assert why.startswith("Triton ") and "cannot compile for sm_20" in why and "'sm_20' is not defined" in why
    unknown = {"arch": "sm_100", "unknown": why, "variants": [], "units": []}
    assert km.failures(unknown) == []
    with pytest.raises(pytest.skip.Exception, match="cannot compile"):
        _result({"sm_100": unknown}, "sm_100")
    with pytest.raises(pytest.fail.Exception, match="cannot compile"):
        _result({"sm_90": dict(unknown, arch="sm_90")}, "sm_90")


def test_the_gpu_suite_reports_every_kernel_the_matrix_compiles():
    """bench/gpu/gpu_kernels.py (the suite's resource summary on a card) walks the same kernels, once each."""
    probe = ("import gpu_kernels; print(' '.join(name.split('.')[1] for name, _ in gpu_kernels._jit_functions()))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # jit gives JITFunctions
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "bench" / "gpu")])
    names = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300, check=True).stdout.split()
    assert set(KERNELS) <= set(names) and len(names) == len(set(names)), names
