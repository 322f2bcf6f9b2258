"""The Triton kernels' compile matrix and resource table, built on the CPU for real GPUs.

No GPU has run these kernels; the interpreter (TRITON_INTERPRET=1, how CI runs them)
hides shared-memory limits, register spills and argument specialisation. This module
compiles every kernel the launchers in ``kernels/`` can launch, ahead of time, for
sm_80 / sm_90 (/ sm_100), with ptxas from the Triton wheel, and reports per variant:
compile errors, shared memory against the arch's per-block limit, registers, spills.

How the launches are found (docs/kernel_resources.md): nothing is hand-written.
Each public launcher (``matmul``, ``linear_relu_forward/backward``,
``mixup_project_forward/backward``, ``drcl_loss_terms``, ``gce_forward``,
``map_topk.topk_indices``, ``map_ranked.average_precisions/hits_at``) is called on CPU
tensors of the production shapes (and a sample of the test shapes) with
``JITFunction.run`` and ``Autotuner.run`` replaced by recorders: nothing executes. The
recorder binds the arguments with Triton's own binder for the target backend
(``create_function_from_signature`` + ``_pack_args``: the signature types, the
divisibility-by-16 and ==1 specialisations, the constexprs and the options a real
launch would use), and for an Autotuner records its whole config list and which
configs its ``prune_configs_by`` hook keeps for the arch. Each arch runs in its own
subprocess with a fake CUDA device of that arch installed before the kernels are
imported (``torch.cuda.get_device_capability`` / ``get_device_properties`` /
``current_device`` and Triton's active driver), so import-time and prune-time
decisions by arch see the arch being compiled for.

CLI::

    python tools/kernel_matrix.py                       # matrix for sm_80, sm_90, sm_100, summary
    python tools/kernel_matrix.py --arch sm_90 --json out.json
    python tools/kernel_matrix.py --table --arch sm_90  # writes bench/results/kernels_sm_90_<date>.md
    python tools/kernel_matrix.py --shapes prod,test --jobs 2

Importable: :func:`run_matrix` returns per-arch results; :func:`failures` the failing
variants (compile error, no config fitting shared memory, default-config spills).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Per-block shared memory a kernel may ask for (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# SM count of the flagship part (for launchers that size grids by it).
ARCHS: dict[str, dict[str, Any]] = {
    "sm_80": {"capability": 80, "max_shared": 166_912, "sms": 108, "name": "A100 (sm_80)"},
    "sm_90": {"capability": 90, "max_shared": 232_448, "sms": 132, "name": "H100/H200 (sm_90)"},
    "sm_100": {"capability": 100, "max_shared": 232_448, "sms": 148, "name": "B200 (sm_100)"},
}
DEFAULT_ARCHS = ("sm_80", "sm_90", "sm_100")
# An arch checked at the production shapes' default configs only (the test suite's plan for the newest arch:
# a full pass would double the matrix's time in CI).
QUICK_PLAN = {"shapes": "prod", "configs": "lazy"}

# Spill budget of a kernel's default (first-choice) config, in bytes of local memory per
# thread (what ptxas reports as LOCAL; Triton's CompiledKernel.n_spills is this / 4).
# 128 B = 32 spilled 32-bit values a thread: at 8 warps, 32 KiB of local memory per
# block, which stays in L1 next to the block's shared memory and costs a few percent;
# spills of kilobytes a thread (the pair-loss kernel's first tiling: up to 3.4 KB) go to
# L2 and DRAM and make a kernel bound by its own spills.
SPILL_BUDGET_BYTES = 128

SHAPE_SETS = ("prod", "test")


# --------------------------------------------------------------------------------------
# The fake device: the arch the launchers and prune hooks see while capturing.

def _install_fake_device(arch: str) -> None:
    import torch
    from triton.backends.compiler import GPUTarget

    spec = ARCHS[arch]
    cap = spec["capability"]
    major, minor = divmod(cap, 10)
    props = types.SimpleNamespace(
        name=f"fake {spec['name']}", major=major, minor=minor, multi_processor_count=spec["sms"],
        shared_memory_per_block_optin=spec["max_shared"], shared_memory_per_block=49152,
        shared_memory_per_multiprocessor=spec["max_shared"] + 1024, total_memory=80 * 2**30,
        warp_size=32, regs_per_multiprocessor=65536, L2_cache_size=50 * 2**20,
        max_threads_per_multi_processor=2048)
    torch.cuda.get_device_capability = lambda device=None: (major, minor)
    torch.cuda.get_device_properties = lambda device=None: props
    torch.cuda.current_device = lambda: 0
    target = GPUTarget("cuda", cap, 32)

    class _Utils:
        @staticmethod
        def get_device_properties(device=0):
            return {"max_shared_mem": spec["max_shared"], "max_num_regs": 65536,
                    "multiprocessor_count": spec["sms"], "warpSize": 32, "sm_clock_rate": 1_980_000,
                    "mem_clock_rate": 2_619_000, "mem_bus_width": 5120}

    class FakeDriver:
        utils = _Utils()

        def get_current_target(self):
            return target

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_device_capability(self, device=0):
            return (major, minor)

        def is_active(self):
            return True

        def get_device_interface(self):
            return torch.cuda

        def get_benchmarker(self):
            raise RuntimeError("kernel_matrix: nothing is benchmarked")

    from triton.runtime.driver import driver as active_driver
    active_driver.set_active(FakeDriver())


# --------------------------------------------------------------------------------------
# Capture: record launches instead of running them.

class Recorder:
    """Collects compile units (one per kernel x specialisation x config) and variants."""

    def __init__(self, arch: str) -> None:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        self.arch = arch
        self.target = GPUTarget("cuda", ARCHS[arch]["capability"], 32)
        self.backend = make_backend(self.target)
        self.binders: dict[int, Callable] = {}
        self.units: dict[str, dict] = {}       # unit key -> unit (with the live src objects)
        self.variants: dict[str, dict] = {}    # variant key -> variant
        self.site = "?"
        self.launches = 0
        self.errors: list[dict] = []

    # -- binding, as JITFunction.run does it
    def bind(self, fn, args, kwargs) -> tuple[dict, dict, dict, Any]:
        from triton.runtime import jit as tjit

        binder = self.binders.get(id(fn))
        if binder is None:
            try:
                binder = tjit.create_function_from_signature(fn.signature, fn.params, self.backend)
            except TypeError:   # older Triton: (sig, kparams) only
                binder = tjit.create_function_from_signature(fn.signature, fn.params)
            self.binders[id(fn)] = binder
        kwargs = dict(kwargs)
        kwargs.setdefault("debug", bool(getattr(fn, "debug", False)))
        bound, spec, opts = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound, spec, opts)
        return signature, constexprs, attrs, options

    def record(self, fn, args, kwargs, configs: list | None = None, kept: list | None = None,
               prune: str | None = None) -> None:
        """One launch: `configs` the Autotuner's list (None: a plain launch), `kept` those pruning keeps."""
        self.launches += 1
        name = fn.__name__ if hasattr(fn, "__name__") else fn.fn.__name__
        plain = configs is None
        if plain:
            cfg_list = [None]
            kept_ids = {0}
        else:
            cfg_list = list(configs)
            kept_ids = {i for i, c in enumerate(cfg_list) if any(c is k or c == k for k in kept)}
        base_sig = None
        entries = []
        for i, cfg in enumerate(cfg_list):
            kw = dict(kwargs) if cfg is None else {**kwargs, **cfg.all_kwargs()}
            try:
                sig, constexprs, attrs, options = self.bind(fn, args, kw)
            except Exception as exc:   # noqa: BLE001 - reported as a capture error
                self.errors.append({"site": self.site, "kernel": name, "error": f"{type(exc).__name__}: {exc}"})
                return
            cfg_names = set(cfg.kwargs) if cfg is not None else set()
            names = list(sig)
            cx_named = {names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
            if base_sig is None:
                base_sig = {
                    "kernel": name,
                    "signature": {k: v for k, v in sig.items() if k not in cfg_names},
                    "constexprs": {k: _show(v) for k, v in cx_named.items() if k not in cfg_names},
                    "attrs": {names[p[0]]: _show(v) for p, v in attrs.items() if v and len(p) == 1},
                }
                if plain:
                    base_sig["options"] = {"num_warps": options.num_warps, "num_stages": options.num_stages}
            opt_show = {"num_warps": options.num_warps, "num_stages": options.num_stages}
            if getattr(options, "maxnreg", None):
                opt_show["maxnreg"] = options.maxnreg
            config_show = {**{k: _show(cx_named[k]) for k in sorted(cfg_names) if k in cx_named}, **opt_show}
            ukey = json.dumps([name, {k: str(v) for k, v in sig.items()}, {k: _show(v) for k, v in cx_named.items()},
                               {names[p[0]]: _show(v) for p, v in attrs.items() if len(p) == 1},
                               _options_key(options)], sort_keys=True)
            if ukey not in self.units:
                self.units[ukey] = {"id": len(self.units), "kernel": name, "fn": fn, "sig": sig,
                                    "constexprs": constexprs, "attrs": attrs, "options": options,
                                    "config": config_show}
            entries.append({"config": config_show, "unit": self.units[ukey]["id"], "kept": i in kept_ids})
        vkey = json.dumps(base_sig, sort_keys=True)
        var = self.variants.get(vkey)
        if var is None:
            var = self.variants[vkey] = {
                "kernel": name, "autotuned": not plain, "prune_hook": prune,
                "dtype": _dtype_of(base_sig["signature"]),
                "precision": base_sig["constexprs"].get("PRECISION"),
                "flags": {k: v for k, v in base_sig["constexprs"].items() if not k.startswith("s_")},
                "signature": base_sig["signature"], "attrs": base_sig["attrs"],
                "sites": [], "configs": entries,
            }
        if self.site not in var["sites"]:
            var["sites"].append(self.site)


def _show(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_show(x) for x in v]
    return str(v)


def _options_key(options) -> dict:
    d = dict(options.__dict__)
    d.pop("extern_libs", None)
    return {k: _show(v) for k, v in d.items()}


def _dtype_of(signature: dict) -> str:
    for v in signature.values():
        if isinstance(v, str) and v.startswith("*fp"):
            return {"*fp32": "float32", "*fp64": "float64", "*fp16": "float16", "*bf16": "bfloat16"}.get(v, v)
    return "int"


def _is_tensor(v: Any) -> bool:
    import torch
    return isinstance(v, torch.Tensor)


class _OnDevice:
    """A CPU tensor as a prune hook should see it: its attributes, but on cuda:0."""

    def __init__(self, t) -> None:
        self._t = t

    @property
    def device(self):
        import torch
        return torch.device("cuda", 0)

    def __getattr__(self, name: str):
        return getattr(self._t, name)


@contextlib.contextmanager
def capturing(rec: Recorder) -> Iterator[None]:
    """Replace the launch paths of JITFunction and Autotuner by `rec`'s recorders."""
    from triton.runtime import autotuner as tat
    from triton.runtime import jit as tjit

    old_jit, old_tune = tjit.JITFunction.run, tat.Autotuner.run

    def jit_run(self, *args, grid=None, warmup=False, **kwargs):
        rec.record(self, args, kwargs)
        return None

    def tune_run(self, *args, **kwargs):
        kwargs.pop("grid", None)
        kwargs.pop("warmup", None)
        # The prune hook sees the tensors as a real launch would: on the (fake) CUDA device.
        self.nargs = {k: _OnDevice(v) if _is_tensor(v) else v for k, v in zip(self.arg_names, args)}
        configs = list(self.configs)
        prune = None
        kept = configs
        early = getattr(self, "early_config_prune", None)
        if early is not None or getattr(self, "perf_model", None) is not None:
            prune = getattr(early, "__qualname__", repr(early))
            try:
                kept = list(self.prune_configs(kwargs))
            except Exception as exc:   # noqa: BLE001 - perf models may need a device; keep the early prune
                try:
                    kept = list(early(configs, self.nargs, **kwargs)) if early is not None else configs
                except Exception as exc2:   # noqa: BLE001 - the hook refuses: nothing fits; a result
                    kept = []
                    prune = f"{prune} raised {type(exc2).__name__}: {exc2} (prune_configs: {exc})"
        fn = self.fn
        while not isinstance(fn, tjit.JITFunction):   # Heuristics inside an Autotuner
            fn = fn.fn
        rec.record(fn, args, kwargs, configs=configs, kept=kept, prune=prune)
        self.nargs = None
        return None

    tjit.JITFunction.run = jit_run
    tat.Autotuner.run = tune_run
    try:
        yield
    finally:
        tjit.JITFunction.run, tat.Autotuner.run = old_jit, old_tune


# --------------------------------------------------------------------------------------
# Scenarios: the launchers at the shapes of docs/design.md section 6.

PROD_RSC = {"B": 1024, "d_in": 4096, "H": 4096, "D": 2048, "C": (10, 80, 200)}
# Test shapes, sampled from tests/kernels/test_kernels_forward.py and tests/kernels/test_kernels_loss.py:
# (B, d_in, H, D, C); B = 1 brings the ==1 specialisations, odd sizes the unaligned strides.
TEST_RSC = [(1, 16, 7, 16, 2), (7, 100, 130, 130, 3), (130, 256, 64, 100, 200), (64, 16, 256, 256, 10)]
# MAP: (name, Q, N, labels, multilabel) x D x k.
PROD_MAP = [("nus-wide", 2100, 193_734, 21, True), ("nus-wide-single", 23_700, 23_700, 10, False),
            ("mscoco", 5000, 117_218, 80, True)]
PROD_MAP_D = (512, 2048)
PROD_MAP_K = (50, 100)
TEST_MAP = [("test-single", 37, 300, 5, False, 24, (5, 20)), ("test-multi", 20, 130, 70, True, 16, (1, 128))]


def _training(shapes: str, rec: Recorder) -> None:
    import torch
    from drcl_fast.kernels import drcl_loss, gce, linear_relu, mixup_project
    from drcl_fast.kernels.precision import precision

    E = torch.empty
    cases = []
    if "prod" in shapes:
        p = PROD_RSC
        cases += [("prod", (p["B"], p["d_in"], p["H"], p["D"], c)) for c in p["C"]]
    if "test" in shapes:
        cases += [("test", s) for s in TEST_RSC]
    for dtype in (torch.float32, torch.float64):
        for prec in (("tf32", "fp32", "bf16") if dtype == torch.float32 else ("fp32",)):
            with precision(prec):
                seen_layers = set()
                for tag, (b, d_in, h, d, c) in cases:
                    dt = "f32" if dtype == torch.float32 else "f64"
                    lab = f"{tag} {dt} {prec}"
                    if (b, d_in, h) not in seen_layers:   # the layers do not depend on C
                        seen_layers.add((b, d_in, h))
                        x, w1, b1 = E(b, d_in, dtype=dtype), E(h, d_in, dtype=dtype), E(h, dtype=dtype)
                        w2, b2, hid = E(h, h, dtype=dtype), E(h, dtype=dtype), E(b, h, dtype=dtype)
                        rec.site = f"linear_relu_forward layer1 [{lab} B={b} d_in={d_in} H={h}]"
                        linear_relu.linear_relu_forward(x, w1, b1, "triton")
                        rec.site = f"linear_relu_forward layer2 [{lab} B={b} H={h}]"
                        linear_relu.linear_relu_forward(hid, w2, b2, "triton")
                        rec.site = f"linear_relu_backward layer1 need_dx=False [{lab} B={b} d_in={d_in} H={h}]"
                        linear_relu.linear_relu_backward(E(b, h, dtype=dtype), x, w1, E(b, h, dtype=dtype),
                                                         "triton", False)
                        rec.site = f"linear_relu_backward layer2 need_dx=True [{lab} B={b} H={h}]"
                        linear_relu.linear_relu_backward(E(b, h, dtype=dtype), hid, w2, E(b, h, dtype=dtype),
                                                         "triton", True)
                    hid, wh, prior = E(b, h, dtype=dtype), E(d, h, dtype=dtype), E(d, c, dtype=dtype)
                    perm = torch.randperm(b)
                    rec.site = f"mixup_project_forward [{lab} B={b} H={h} D={d} C={c}]"
                    mixup_project.mixup_project_forward(hid, wh, perm, 0.9, prior)
                    rec.site = f"mixup_project_backward [{lab} B={b} H={h} D={d} C={c}]"
                    mixup_project.mixup_project_backward(E(b, d, dtype=dtype), E(b, c, dtype=dtype), hid, wh,
                                                         E(b, d, dtype=dtype), E(b, dtype=dtype), perm, 0.9,
                                                         prior, True)
                    feats = torch.zeros(b, d, dtype=dtype, requires_grad=True)
                    logits = torch.zeros(b, c, dtype=dtype, requires_grad=True)
                    targets, pinv = torch.zeros(b, c, dtype=dtype), torch.zeros(c, d, dtype=dtype)
                    for q in (0.0, 0.5):
                        rec.site = f"drcl_loss_terms q={q} [{lab} B={b} D={d} C={c}]"
                        drcl_loss.drcl_loss_terms(feats, targets, logits, pinv, q)
                    rec.site = f"TritonEngine.forward need_grad=False [{lab} B={b} D={d} C={c}]"
                    with torch.no_grad():
                        drcl_loss.ENGINE.forward(feats.detach(), targets, logits.detach(), pinv, 0.5,
                                                 need_grad=False)
                    rec.site = f"gce_forward (SPL) q=0.5 [{lab} B={b} C={c}]"
                    gce.gce_forward(E(b, c, dtype=dtype), E(b, c, dtype=dtype), 0.5)


def _map(shapes: str, rec: Recorder) -> None:
    import torch
    from drcl_fast.kernels import map_ranked, map_topk
    from drcl_fast.retrieval import labels as label_codes
    from drcl_fast.retrieval import pr, reference
    from drcl_fast.retrieval import triton as rt

    cases = []
    if "prod" in shapes:
        cases += [("prod", n, q, g, nl, ml, d, PROD_MAP_K) for (n, q, g, nl, ml) in PROD_MAP for d in PROD_MAP_D]
    if "test" in shapes:
        cases += [("test", n, q, g, nl, ml, d, ks) for (n, q, g, nl, ml, d, ks) in TEST_MAP]
    for tag, name, nq, ng, nlab, multi, d, ks in cases:
        if multi:
            yq, yg = torch.zeros(nq, nlab, dtype=torch.int64), torch.zeros(ng, nlab, dtype=torch.int64)
        else:
            yq, yg = torch.zeros(nq, dtype=torch.int64), torch.zeros(ng, dtype=torch.int64)
        codes = label_codes.encode(yq, yg)
        query, gallery = torch.empty(nq, d), torch.empty(ng, d)
        lab = f"{tag} {name} Q={nq} N={ng} D={d}"
        # The chunking of drcl_fast.retrieval.triton._ranked_chunks: first and last chunk
        # (a later chunk's views start off the allocation's alignment).
        for k in ks:
            step = rt._FUSED_CHUNK
            for start in sorted({0, ((nq - 1) // step) * step}):
                chunk = query[start:start + step]
                rec.site = f"map_topk.topk_indices k={k} chunk@{start} [{lab}]"
                order = map_topk.topk_indices(chunk, gallery, k)
                rec.site = f"map_ranked.average_precisions MAP@{k} chunk@{start} [{lab}]"
                map_ranked.average_precisions(order, codes.query[start:start + step], codes.gallery, multi)
        if d != max(PROD_MAP_D) and tag == "prod":
            continue   # the walks do not depend on D
        step = reference.auto_chunk_size(nq, ng, rt.DEFAULT_MAX_MEMORY, rt._SORT_BYTES_PER_PAIR)
        for start in sorted({0, step if step < nq else 0}):
            rows = min(step, nq - start)
            order = torch.empty(rows, ng, dtype=torch.int64)   # sorted indices[:, :N] of the sort path
            rec.site = f"map_ranked.average_precisions MAP@all chunk@{start} [{lab}]"
            map_ranked.average_precisions(order, codes.query[start:start + step], codes.gallery, multi)
            cut = reference.check_cutoffs(pr.default_cutoffs(ng), ng)
            rec.site = f"map_ranked.hits_at PR cutoffs={len(cut)} chunk@{start} [{lab}]"
            map_ranked.hits_at(order, codes.query[start:start + step], codes.gallery, cut)


def _ensure_kernels_importable() -> None:
    """drcl_fast.kernels is kernels/ mapped by the install; map it here when drcl_fast runs from the tree."""
    import importlib.util

    try:
        import drcl_fast.kernels  # noqa: F401
        return
    except ModuleNotFoundError:
        pass
    import drcl_fast
    spec = importlib.util.spec_from_file_location("drcl_fast.kernels", ROOT / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "kernels")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["drcl_fast.kernels"] = mod
    spec.loader.exec_module(mod)
    drcl_fast.kernels = mod


def capture(arch: str, shapes: str) -> Recorder:
    """Install the fake device, import the kernels, call every launcher; nothing runs."""
    os.environ.pop("TRITON_INTERPRET", None)
    _install_fake_device(arch)
    _ensure_kernels_importable()
    rec = Recorder(arch)
    with capturing(rec):
        for part in (_training, _map):
            try:
                part(shapes, rec)
            except Exception as exc:   # noqa: BLE001 - a launcher that cannot be captured
                import traceback
                rec.errors.append({"site": rec.site, "kernel": "?", "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc(limit=6)})
    return rec


# --------------------------------------------------------------------------------------
# Compile.

def _cuobjdump() -> str:
    try:
        from triton import knobs
        return knobs.nvidia.cuobjdump.path
    except Exception:   # noqa: BLE001
        import triton
        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _resources(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True)
    finally:
        os.remove(path)
    m = _RES.search(out.stdout)
    if not m:
        return {"regs": None, "stack": None, "static_shared": None, "local": None,
                "resource_error": (out.stderr or out.stdout)[-300:]}
    regs, stack, shared, local = map(int, m.groups())
    # What cuFuncGetAttribute(LOCAL_SIZE_BYTES) reports on a GPU, and Triton's n_spills * 4:
    # the stack frame (where ptxas spills) plus any other local memory.
    return {"regs": regs, "stack": stack, "static_shared": shared, "local": stack + local}


def compile_unit(unit: dict, target) -> dict:
    import triton
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    try:
        src = ASTSource(unit["fn"], unit["sig"], unit["constexprs"], unit["attrs"])
        kernel = triton.compile(src, target=target, options=unit["options"].__dict__)
    except Exception as exc:   # noqa: BLE001 - a compile error is a result
        msg = f"{type(exc).__name__}: {exc}"
        root = exc   # a CompilationError's message is the source line; the reason is its deepest cause
        while (root.__cause__ or root.__context__) is not None:
            root = root.__cause__ or root.__context__
        if root is not exc:
            import traceback
            where = traceback.extract_tb(root.__traceback__)[-1] if root.__traceback__ else None
            msg += f" <- {type(root).__name__}: {str(root)[-400:]}" + (
                f" at {Path(where.filename).name}:{where.lineno}: {where.line}" if where else "")
        return {"error": msg[-2000:], "seconds": round(time.perf_counter() - t0, 2)}
    md = kernel.metadata
    res = _resources(kernel.asm["cubin"])
    shared = md.shared if hasattr(md, "shared") else md["shared"]
    return {"error": None, "shared": int(shared), "seconds": round(time.perf_counter() - t0, 2),
            "spills": None if res["local"] is None else res["local"] // 4, **res}


CONFIG_MODES = ("all", "prod-all", "lazy")


def worker(arch: str, shapes: str, out: str, configs: str = "prod-all") -> None:
    """One arch, in this (fresh) process: capture, dedupe, compile, write JSON.

    `configs`: "all" compiles every config pruning keeps; "lazy" a variant's default
    (first kept) config, then the next kept ones only until one fits shared memory;
    "prod-all": "all" for variants a production shape reaches, "lazy" for the others.
    """
    import triton

    t0 = time.perf_counter()
    os.environ.pop("TRITON_INTERPRET", None)
    unknown = arch_unknown(arch)
    if unknown:
        Path(out).write_text(json.dumps({"arch": arch, "triton": triton.__version__, "unknown": unknown,
                                         "variants": [], "units": []}))
        return
    rec = capture(arch, shapes)
    t_cap = time.perf_counter() - t0
    by_id = {u["id"]: u for u in rec.units.values()}
    limit = ARCHS[arch]["max_shared"]
    results: dict[int, dict] = {}

    def get(uid: int) -> dict:
        if uid not in results:
            results[uid] = compile_unit(by_id[uid], rec.target)
        return results[uid]

    for v in rec.variants.values():
        kept = [e["unit"] for e in v["configs"] if e["kept"]]
        full = configs == "all" or (configs == "prod-all" and is_prod(v))
        for uid in kept:
            r = get(uid)
            if not full and not r["error"] and r["shared"] <= limit:
                break
    units = [{"id": uid, "kernel": by_id[uid]["kernel"], "config": by_id[uid]["config"], **results[uid]}
             for uid in sorted(results)]
    payload = {
        "arch": arch, "triton": triton.__version__, "max_shared": limit,
        "shapes": shapes, "configs_mode": configs, "launches": rec.launches, "capture_errors": rec.errors,
        "variants": list(rec.variants.values()), "units": units,
        "capture_seconds": round(t_cap, 1), "seconds": round(time.perf_counter() - t0, 1),
        "compile_seconds": round(sum(r["seconds"] for r in results.values()), 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    Path(out).write_text(json.dumps(payload, indent=1, default=str))


# --------------------------------------------------------------------------------------
# Orchestration (subprocess per arch) and checks.

def arch_unknown(arch: str) -> str | None:
    """Why the installed Triton cannot compile for `arch` (a one-line kernel is tried), or None if it can.

    In a process without TRITON_INTERPRET (a worker's), where ``triton.jit`` gives compilable kernels."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    @triton.jit
    def _probe(x_ptr):
        tl.store(x_ptr, 1.0)

    try:
        triton.compile(triton.compiler.ASTSource(_probe, {"x_ptr": "*fp32"}, {}),
                       target=GPUTarget("cuda", ARCHS[arch]["capability"], 32))
    except Exception as exc:   # noqa: BLE001 - any failure means "not this Triton"
        lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()] or [""]
        why = next((line for line in lines if "fatal" in line), lines[0])   # ptxas's own line, where it refused
        return f"Triton {triton.__version__} cannot compile for {arch}: {type(exc).__name__}: {why[:300]}"
    return None


def run_matrix(archs=DEFAULT_ARCHS, shapes: str = "prod,test", jobs: int = 2, python: str | None = None,
               cache_dir: str | None = None, timeout: float = 3600, configs: str = "prod-all",
               per_arch: dict[str, dict[str, str]] | None = None) -> dict[str, dict]:
    """{arch: results} from one fresh subprocess per arch, `jobs` at a time.

    `per_arch` overrides `shapes` and `configs` for some archs, e.g. ``{"sm_100": {"shapes": "prod",
    "configs": "lazy"}}`` for an arch checked at the production shapes' default configs only.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # 3.9 warns when unset; 1 is its current default
    if cache_dir:
        env["TRITON_CACHE_DIR"] = cache_dir
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    tmp = tempfile.mkdtemp(prefix="kernel_matrix_")
    pending = list(archs)
    running: list[tuple[str, subprocess.Popen, str]] = []
    out: dict[str, dict] = {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            arch = pending.pop(0)
            plan = {"shapes": shapes, "configs": configs, **(per_arch or {}).get(arch, {})}
            path = os.path.join(tmp, f"{arch}.json")
            proc = subprocess.Popen([python or sys.executable, str(Path(__file__).resolve()), "--worker", arch,
                                     "--shapes", plan["shapes"], "--configs", plan["configs"], "--json", path],
                                    env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((arch, proc, path))
        arch, proc, path = running.pop(0)
        log, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(path):
            out[arch] = {"arch": arch, "worker_failed": True, "log": log[-4000:], "variants": [], "units": []}
        else:
            out[arch] = json.loads(Path(path).read_text())
    return out


def is_prod(v: dict) -> bool:
    """Whether a production shape reaches this variant (else only test shapes do)."""
    return any("[prod" in s for s in v["sites"])


def variant_label(v: dict) -> str:
    """kernel[dtype precision flags; ==1: ints specialised to 1; !16: pointers/ints not divisible by 16]."""
    flags = ",".join(f"{k}={x}" for k, x in v["flags"].items() if k not in ("ACC", "PRECISION"))
    sig = v["signature"]
    ones = [k for k, t in sig.items() if t == "constexpr" and k not in v["flags"]]
    nodiv = [k for k, t in sig.items() if t != "constexpr" and (t.startswith("*") or t[0] in "iu")
             and k not in v["attrs"]]
    spec = (f"; ==1:{','.join(ones)}" if ones else "") + (f"; !16:{','.join(nodiv)}" if nodiv else "")
    return f"{v['kernel']}[{v['dtype']} {v['precision'] or '-'} {flags}{spec}]"


def failures(result: dict, spill_budget: int = SPILL_BUDGET_BYTES) -> list[dict]:
    """The failing variants of one arch's result: check in {"capture", "compile", "smem", "spill"}."""
    arch = result["arch"]
    if result.get("worker_failed"):
        return [{"arch": arch, "kernel": "*", "check": "worker", "detail": result.get("log", "")[-2000:],
                 "variant": None}]
    if result.get("unknown"):   # nothing to check: this Triton does not target the arch
        return []
    units = {u["id"]: u for u in result["units"]}
    limit = result["max_shared"]
    out = [{"arch": arch, "kernel": e["kernel"], "check": "capture", "variant": None,
            "detail": f"{e['site']}: {e['error']}"} for e in result["capture_errors"]]
    for v in result["variants"]:
        kept = [(e, units[e["unit"]]) for e in v["configs"] if e["kept"] and e["unit"] in units]
        base = {"arch": arch, "kernel": v["kernel"], "variant": v, "label": variant_label(v)}
        if not any(e["kept"] for e in v["configs"]):
            out.append({**base, "check": "smem", "detail": f"pruning kept no config ({v.get('prune_hook')})"})
            continue
        if not kept:
            out.append({**base, "check": "compile", "detail": "no kept config was compiled"})
            continue
        bad = [(e, u) for e, u in kept if u["error"]]
        if bad:
            out.append({**base, "check": "compile",
                        "detail": "; ".join(f"{e['config']}: ...{u['error'][-320:]}" for e, u in bad)})
        ok = [(e, u) for e, u in kept if not u["error"]]
        if ok and all(u["shared"] > limit for _, u in ok):
            out.append({**base, "check": "smem", "detail": "every kept config exceeds {} B: {}".format(
                limit, ", ".join(f"{e['config']} -> {u['shared']} B" for e, u in ok))})
        first_e, first_u = kept[0]
        # Spills cost speed, which matters at production shapes only.
        if is_prod(v) and not first_u["error"] and first_u.get("local") is not None and first_u["local"] > spill_budget:
            out.append({**base, "check": "spill", "detail": "default config {}: {} B local/thread ({} regs) > "
                        "budget {} B".format(first_e["config"], first_u["local"], first_u["regs"], spill_budget)})
    return out


def describe(f: dict) -> str:
    v = f.get("variant")
    sites = "" if not v else "\n      reached from: " + "; ".join(v["sites"][:4]) + (
        f" (+{len(v['sites']) - 4} more)" if len(v["sites"]) > 4 else "")
    return f"[{f['arch']}] {f['check']}: {f.get('label', f['kernel'])}\n      {f['detail']}{sites}"


def counts(results: dict[str, dict]) -> dict:
    c = {"archs": len(results), "variants": 0, "configs_compiled": 0, "configs_pruned": 0, "launches": 0}
    for r in results.values():
        c["variants"] += len(r["variants"])
        c["configs_compiled"] += len(r["units"])
        c["configs_pruned"] += sum(1 for v in r["variants"] for e in v["configs"] if not e["kept"])
        c["launches"] += r.get("launches", 0)
    return c


# --------------------------------------------------------------------------------------
# The resource table.

def table(result: dict) -> str:
    import triton

    arch = result["arch"]
    units = {u["id"]: u for u in result["units"]}
    lines = [f"# Triton kernel resources, {arch} ({ARCHS[arch]['name']})", "",
             f"Triton {result.get('triton', triton.__version__)}, compiled on the CPU (no GPU) on "
             f"{result.get('date')}, by `python tools/kernel_matrix.py --table --arch {arch}` "
             f"(docs/kernel_resources.md). Shared-memory limit per block: {result['max_shared']:,} B; "
             f"spill budget of a default config: {SPILL_BUDGET_BYTES} B local memory per thread.", "",
             "One row per variant (kernel x specialisation reached by a launcher) at its default "
             "(first-choice) config: the first config pruning keeps. `regs` registers per thread; "
             "`local` bytes of local memory (spills) per thread (Triton's n_spills = local / 4); "
             "`smem` the dynamic shared memory the launch requests; `configs` kept by pruning / in the "
             "config list, and how many of the compiled kept ones fit; `fails` the failing checks; `prod` "
             "whether a production shape reaches it (else test shapes only).", ""]
    fails: dict[int, list[str]] = {}
    for f in failures(result):
        if f.get("variant") is not None:
            fails.setdefault(id(f["variant"]), []).append(f["check"])
    by_kernel: dict[str, list[dict]] = {}
    for v in result["variants"]:
        by_kernel.setdefault(v["kernel"], []).append(v)
    for kernel in sorted(by_kernel):
        lines += [f"## `{kernel}`", "",
                  "| variant | default config | regs | local B | smem B | configs kept/all (fit of compiled) "
                  "| fails | prod | reached from (first) |", "|---|---|---:|---:|---:|---|---|---|---|"]
        for v in by_kernel[kernel]:
            n_kept = sum(1 for e in v["configs"] if e["kept"])
            kept = [(e, units[e["unit"]]) for e in v["configs"] if e["kept"] and e["unit"] in units]
            fit = sum(1 for _, u in kept if not u["error"] and u["shared"] <= result["max_shared"])
            cfg = ", ".join(f"{k}={val}" for k, val in kept[0][0]["config"].items()) if kept else "-"
            u = kept[0][1] if kept else {"error": "no config kept"}
            cells = ["error", "", ""] if u["error"] else [str(u["regs"]), str(u["local"]), f"{u['shared']:,}"]
            label = variant_label(v).replace("|", "/")
            sites = v["sites"][0] + (f" (+{len(v['sites']) - 1})" if len(v["sites"]) > 1 else "")
            lines.append(f"| `{label}` | {cfg} | {' | '.join(cells)} | {n_kept}/{len(v['configs'])} "
                         f"({fit} of {len(kept)} compiled) | {', '.join(fails.get(id(v), [])) or 'ok'} "
                         f"| {'yes' if is_prod(v) else 'test'} | {sites} |")
        lines.append("")
        tuned = [v for v in by_kernel[kernel] if v["autotuned"] and is_prod(v)]
        if tuned:
            lines += [f"Every config of `{kernel}` at the production variants (`-`: pruned for {arch}, or "
                      "not compiled):", "", "| variant | " + " | ".join(
                          "cfg{}: {}".format(i, "/".join(str(x) for x in e["config"].values()))
                          for i, e in enumerate(tuned[0]["configs"])) + " |",
                      "|---|" + "---|" * len(tuned[0]["configs"])]
            for v in tuned:
                cells = []
                for e in v["configs"]:
                    u = units.get(e["unit"]) if e["kept"] else None
                    if u is None:
                        cells.append("-")
                    elif u["error"]:
                        cells.append("error")
                    else:
                        over = " **>smem**" if u["shared"] > result["max_shared"] else ""
                        cells.append(f"{u['regs']} r, {u['local']} B, {u['shared'] // 1024} KiB{over}")
                lines.append(f"| `{variant_label(v).replace('|', '/')}` | " + " | ".join(cells) + " |")
            lines += ["", "(config columns: " + ", ".join(tuned[0]["configs"][0]["config"]) +
                      "; cells: registers, local bytes per thread, shared memory)", ""]
    c = counts({arch: result})
    lines += [f"{c['variants']} variants, {c['configs_compiled']} configs compiled, {c['configs_pruned']} pruned; "
              f"{result.get('seconds')} s (capture {result.get('capture_seconds')} s)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=",".join(DEFAULT_ARCHS), help="comma-separated: sm_80,sm_90,sm_100 or 'all'")
    p.add_argument("--shapes", default="prod,test", help="prod, test or prod,test")
    p.add_argument("--jobs", type=int, default=2, help="arch subprocesses at a time")
    p.add_argument("--table", action="store_true", help="write bench/results/kernels_<arch>_<date>.md per arch")
    p.add_argument("--table-prefix", default="kernels", help="file name prefix of the tables")
    p.add_argument("--json", help="write the results here (with --worker: the worker's output)")
    p.add_argument("--cache-dir", help="TRITON_CACHE_DIR for the compiles")
    p.add_argument("--configs", default="prod-all", choices=CONFIG_MODES,
                   help="all: every kept config; lazy: the default, then others until one fits; "
                        "prod-all (default): all for production-shape variants, lazy for test-only ones")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker, a.shapes, a.json, a.configs)
        return 0
    archs = list(ARCHS) if a.arch == "all" else a.arch.split(",")
    t0 = time.perf_counter()
    results = run_matrix(archs, a.shapes, a.jobs, cache_dir=a.cache_dir, configs=a.configs)
    wall = time.perf_counter() - t0
    all_fail = [f for r in results.values() for f in failures(r)]
    for r in results.values():
        if r.get("unknown"):
            print(f"skipped: {r['unknown']}")
    for f in all_fail:
        print(describe(f))
    c = counts(results)
    print(f"{c['variants']} variants, {c['configs_compiled']} configs compiled ({c['configs_pruned']} pruned), "
          f"{c['archs']} archs, {c['launches']} launches captured; {len(all_fail)} failing checks; {wall:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    if a.table:
        RESULTS.mkdir(parents=True, exist_ok=True)
        day = datetime.date.today().isoformat()
        for arch, r in results.items():
            if r.get("worker_failed") or r.get("unknown"):
                print(f"{arch}: no table: " + (r.get("unknown") or f"worker failed:\n{r['log']}"))
                continue
            path = RESULTS / f"{a.table_prefix}_{arch}_{day}.md"
            path.write_text(table(r))
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if all_fail else 0


if __name__ == "__main__":
    sys.exit(main())
