"""Every Triton kernel variant the launchers can launch compiles for real GPUs and fits them.

The interpreter the other kernel tests run under hides shared-memory limits, register
spills and argument specialisation. ``bench/kernel_matrix.py`` captures the launches
the launchers in ``kernels/`` make at the production and test shapes (nothing runs),
and compiles them ahead of time for sm_80 and sm_90 with the wheel's ptxas, on the CPU
(docs/kernel_resources.md). Checked per variant (kernel x specialisation x arch):

- ``capture``: every launcher could be called and its launches bound;
- ``compile``: every config the launcher would keep compiles;
- ``smem``: at least one kept config fits the arch's shared memory per block;
- ``spill``: the default (first-choice) config of a variant a production shape reaches
  stays within ``SPILL_BUDGET_BYTES`` of local memory per thread (kernel_matrix.py says why).

Known defects, being fixed in parallel, are listed in ``KNOWN_DEFECTS``: each is its own
``xfail(strict=True)`` test, which starts failing (XPASS) the day its fix lands, so its
entry can be deleted; the per-(check, arch) tests fail on anything not listed there.

Cold, the matrix takes minutes on a 2-core machine (ptxas); Triton's on-disk cache
(TRITON_CACHE_DIR, default ~/.triton/cache) makes a rerun take seconds. Set
DRCL_KERNEL_MATRIX_CONFIGS=lazy to compile only each variant's default config (and the
next ones until one fits) for a quicker cold run, or =all for every kept config.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _load_matrix():
    spec = importlib.util.spec_from_file_location("kernel_matrix", ROOT / "bench" / "kernel_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


km = _load_matrix()

ARCHS = ("sm_80", "sm_90")
CHECKS = ("capture", "compile", "smem", "spill")
KERNELS = ("_matmul_kernel", "_mix_project_fwd", "_mix_project_bwd", "_pair_kernel", "_mse_kernel",
           "_gce_kernel", "_topk_kernel", "_walk_kernel")
CONFIGS = os.environ.get("DRCL_KERNEL_MATRIX_CONFIGS", "prod-all")


@dataclasses.dataclass(frozen=True)
class Defect:
    """A known failing check: `check` on `arch` for variants of `kernel` matching `match`."""

    id: str
    arch: str
    kernel: str
    check: str
    match: tuple = ()        # ((field, value), ...) on the variant: dtype, precision, prod, or a flag name
    reason: str = ""

    def matches(self, f: dict) -> bool:
        if (f["arch"], f["kernel"], f["check"]) != (self.arch, self.kernel, self.check):
            return False
        v = f.get("variant") or {}
        fields = {"dtype": v.get("dtype"), "precision": v.get("precision"), "prod": km.is_prod(v) if v else None,
                  **v.get("flags", {})}
        return all(fields.get(k) == want for k, want in self.match)


# What fails on the day this file was written (Triton 3.9, 2026-12-01, after the GEMM configs' per-arch
# prune and the Mixup tail's class chunks landed): the pair-loss kernel's spills, issue 10. Delete an entry
# when its test XPASSes.
_PAIR_SPILL = ("pair-loss kernel (_pair_kernel: 64x64 pair tiles, BLOCK_D 64, 8 warps) runs at the 255-register "
               "ceiling and spills beyond the budget in its default (only) config")
_PAIR_SPILLING = {"sm_80": [("float32", "tf32"), ("float32", "ieee"), ("float32", "bf16"), ("float64", "ieee")],
                  "sm_90": [("float32", "tf32"), ("float32", "ieee"), ("float32", "bf16"), ("float64", "ieee")]}


def _defects() -> list[Defect]:
    return [Defect(f"{arch}-_pair_kernel-{dt}-{pr}-spill", arch, "_pair_kernel", "spill",
                   (("dtype", dt), ("precision", pr)), _PAIR_SPILL)
            for arch, rows in _PAIR_SPILLING.items() for dt, pr in rows]


KNOWN_DEFECTS: list[Defect] = _defects()


def _known(f: dict) -> Defect | None:
    return next((d for d in KNOWN_DEFECTS if d.matches(f)), None)


@pytest.fixture(scope="module")
def matrix():
    t0 = time.perf_counter()
    results = km.run_matrix(ARCHS, shapes="prod,test", jobs=2, configs=CONFIGS)
    c = km.counts(results)
    c["seconds"] = round(time.perf_counter() - t0, 1)
    fails = {arch: km.failures(r) for arch, r in results.items()}
    return results, fails, c


def test_matrix_covers_every_kernel_on_every_arch(matrix, capsys):
    results, fails, c = matrix
    with capsys.disabled():
        print(f"\ncompile matrix: {c['variants']} variants, {c['configs_compiled']} configs compiled "
              f"({c['configs_pruned']} pruned by the launchers), {c['archs']} archs, {c['launches']} launches "
              f"captured, {c['seconds']} s; failing checks: "
              + ", ".join(f"{a} {len(f)}" for a, f in fails.items()))
    for arch in ARCHS:
        r = results[arch]
        assert not r.get("worker_failed"), f"{arch}: the matrix worker failed:\n{r.get('log')}"
        found = {v["kernel"] for v in r["variants"]}
        assert set(KERNELS) <= found, f"{arch}: no launch captured for {sorted(set(KERNELS) - found)}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("check", CHECKS)
def test_no_unexpected_failures(matrix, check, arch):
    _, fails, _ = matrix
    new = [f for f in fails[arch] if f["check"] == check and _known(f) is None]
    assert not new, f"{len(new)} variant(s) fail the {check!r} check on {arch}:\n" + "\n".join(map(km.describe, new))


@pytest.mark.parametrize("defect", [pytest.param(d, id=d.id, marks=pytest.mark.xfail(strict=True, reason=d.reason))
                                    for d in KNOWN_DEFECTS])
def test_known_defect_is_fixed(matrix, defect):
    _, fails, _ = matrix
    still = [f for f in fails[defect.arch] if defect.matches(f)]
    assert not still, f"{defect.id}: {len(still)} variant(s) still fail:\n" + "\n".join(map(km.describe, still))


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
