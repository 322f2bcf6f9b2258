"""GPU suite section: the fused training kernels against the reference, on the same card.

Run by bench/gpu/gpu_suite.py (`--only gpu_train`), in this order:
1. correctness on the device: every Triton op against the float64 reference at
   shapes off the block sizes, forward and gradients, held to "twice PyTorch's own
   float32 error plus two float32 epsilons" (rows say ok or FAIL);
2. the loss forward+backward at B = 1,024, D = 2,048, C = 10 and 200: eager
   reference, torch.compile(reference), the restructured path, Triton in TF32 and in
   strict float32, with peak memory beyond the inputs;
3. the card's measured matrix-multiply rate (torch.mm, 4,096^3) in float32, TF32, bf16;
4. the whole RSC step (B = 1,024, d_in = 4,096, H = 4,096, D = 2,048, C = 10;
   encoder, Mixup, loss, backward, Adam): the eager float32 reference against the
   fast path in TF32, float32 and bf16, and with vendor (cuBLASLt
   epilogue) GEMMs, each as a speed-up and as a fraction of the card's rate;
5. MAP@all of the bundled mfeat data trained with the fast path at each --precision
   (fp32, tf32, bf16; preset "mfeat"), and each one's difference from fp32 (the bar: 0.005).
Without a GPU, `--smoke` runs every step at tiny sizes on CPU tensors under
TRITON_INTERPRET=1 ("auto" is pointed at Triton for the CPU for the run).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
import traceback
from typing import Callable, Iterator

import torch

from bench.shared.loss_case import forward_backward, loss_inputs
from gpu_timing import peak_bytes, timed
from drcl_fast import ops
from drcl_fast.config import DRCLConfig, PRECISIONS
from drcl_fast.data import load_mfeat
from drcl_fast.data.container import MultiModalData, Split
from drcl_fast.kernels import linear_relu as linear_relu_module
from drcl_fast.kernels.linear_relu import linear_relu
from drcl_fast.kernels.mixup_project import MixupProject
from drcl_fast.kernels.precision import precision
from drcl_fast.model import seeded_encoder
from drcl_fast.ops import reference
from drcl_fast.runtime import backends
from drcl_fast.runtime.floor import step_flops
from drcl_fast.training.optim import adam
from drcl_fast.training.rsc import RSCSettings, batch_loss
from drcl_fast.training.spl import initial_prior
from drcl_fast.training.trainer import fit

SECTION = "gpu_train"
EPS32 = torch.finfo(torch.float32).eps
FULL = {"loss": (1024, 2048), "classes": (10, 200), "step": (1024, 4096, 4096, 2048, 10), "mm": 4096,
        "repeats": 20, "check": (130, 300, 260, 10)}
SMOKE = {"loss": (40, 96), "classes": (3, 40), "step": (40, 24, 48, 32, 3), "mm": 64, "repeats": 2,
         "check": (19, 40, 33, 3)}
MAP_BAR = 0.005


@contextlib.contextmanager
def fast_dispatch(device: str) -> Iterator[str]:
    """The backend name that runs the Triton kernels here: "triton" on a GPU; under the
    interpreter, "auto" with Triton ahead of the reference in the CPU's preference for the
    duration (cpp stays first: MAP evaluation under the interpreter would take minutes)."""
    if device == "cuda":
        yield "triton"
        return
    saved = backends.AUTO_PREFERENCE["cpu"]
    backends.AUTO_PREFERENCE["cpu"] = ("cpp", "triton", "torch")
    try:
        yield "auto"
    finally:
        backends.AUTO_PREFERENCE["cpu"] = saved


@contextlib.contextmanager
def cublas_tf32(enabled: bool) -> Iterator[None]:
    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32
    flags.allow_tf32 = enabled
    try:
        yield
    finally:
        flags.allow_tf32 = before


def peak_mib(fn: Callable[[], object], device: str) -> str:
    peak = peak_bytes(fn, device)
    return "n/a" if peak is None else f"{peak / 2**20:.1f} MiB"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def outputs_and_grads(fn: Callable, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """fn's outputs and the gradients of the sum of their first entries' weighted sums for every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    weights = [torch.linspace(-1, 1, o.numel(), device=o.device, dtype=o.dtype).view(o.shape) for o in outs]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), leaves)
    return [o.detach() for o in outs] + list(grads)


def check(suite, case: str, fast: Callable, ref: Callable, inputs64: list[torch.Tensor]) -> None:
    """One correctness row: the worst output's error, against the rule."""
    want = outputs_and_grads(ref, inputs64)
    inputs32 = [t.float() for t in inputs64]
    with precision("fp32"):
        got = outputs_and_grads(fast, inputs32)
    theirs = outputs_and_grads(ref, inputs32)
    errors = [(rel_err(g, w), rel_err(t, w)) for g, t, w in zip(got, theirs, want)]
    ok = all(e <= 2 * t + 2 * EPS32 for e, t in errors)
    worst = max(errors)
    suite.add(SECTION, f"check {case}", f"rel err {worst[0]:.2e} (torch fp32 {worst[1]:.2e})", "ok" if ok else "FAIL")


def check_correctness(suite, cfg: dict, fast: str) -> None:
    dev = suite.device
    b, d_in, h, c = cfg["check"]
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dev)
    for classes in cfg["classes"]:
        f, y, logits, pinv = (t.double().to(dev) for t in loss_inputs(b, max(h, classes), classes))
        check(suite, f"loss B={b} D={f.shape[1]} C={classes}",
              lambda ff, lg: torch.stack(ops.drcl_loss_terms(ff, y.to(ff.dtype), lg, pinv.to(ff.dtype), 0.5, fast)),
              lambda ff, lg: torch.stack(reference.drcl_loss_terms(ff, y.to(ff.dtype), lg, pinv.to(ff.dtype), 0.5)),
              [f, logits])
    for impl in linear_relu_module.IMPLS:
        check(suite, f"linear_relu[{impl}] {b}x{d_in}->{h}", lambda *a: linear_relu(*a, impl), reference.linear_relu,
              [rand(b, d_in), rand(h, d_in) / d_in ** 0.5, rand(h)])
    perm = torch.randperm(b, generator=g).to(dev)
    prior = rand(h, c) / h ** 0.5
    check(suite, f"mixup_project {b}x{d_in}->{h} C={c}",
          lambda hid, w: MixupProject.apply(hid, w, perm, 0.9, prior.to(hid.dtype)),
          lambda hid, w: reference.mixup_project(hid, w, perm, 0.9, prior.to(hid.dtype)),
          [rand(b, d_in), rand(h, d_in) / d_in ** 0.5])


def loss_speed(suite, cfg: dict, fast: str) -> None:
    dev, repeats = suite.device, cfg["repeats"]
    b, d = cfg["loss"]
    # The smoke run traces the same way but skips inductor's code generation (tens of seconds on a CPU).
    compiled = torch.compile(lambda f, y, lg, pinv: reference.drcl_loss(f, y, lg, pinv, 0.5, 0.1, 0.1, 1.0),
                             backend="aot_eager" if suite.smoke else "inductor")

    def compiled_step(f, y, logits, pinv):
        f, logits = f.detach().requires_grad_(), logits.detach().requires_grad_()
        compiled(f, y, logits, pinv).backward()

    for c in cfg["classes"]:
        inputs = [t.to(dev) for t in loss_inputs(b, d, c)]
        with cublas_tf32(False):
            eager = timed(lambda: forward_backward("torch", *inputs), dev, repeats)[0]
            comp = timed(lambda: compiled_step(*inputs), dev, repeats)[0]
            runs = {"restructured": timed(lambda: forward_backward("restructured", *inputs), dev, repeats)[0]}
            for name in ("tf32", "fp32"):
                with precision(name):
                    runs[f"triton {name}"] = timed(lambda: forward_backward(fast, *inputs), dev, repeats)[0]
            memory = {name: peak_mib(lambda: forward_backward(impl, *inputs), dev)
                      for name, impl in (("reference", "torch"), ("triton", fast))}
        case = f"loss fwd+bwd B={b} D={d} C={c}"
        suite.add(SECTION, case, f"eager {eager * 1e3:.2f} ms, torch.compile {comp * 1e3:.2f} ms", "reference")
        for name, seconds in runs.items():
            suite.add(SECTION, case, f"{name} {seconds * 1e3:.2f} ms: {eager / seconds:.2f}x eager, "
                                     f"{comp / seconds:.2f}x compiled", "bars: 3x eager, 1.5x compiled")
        suite.add(SECTION, case, f"peak beyond inputs: reference {memory['reference']}, triton {memory['triton']}",
                  "bar: at most half")


def matmul_rates(suite, cfg: dict) -> dict[str, float]:
    """TFLOP/s of torch.mm at n^3 in each precision: the card's measured rate."""
    n, dev = cfg["mm"], suite.device
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    rates = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        x, y = a.to(dtype), b.to(dtype)
        with cublas_tf32(tf32):
            seconds = timed(lambda: x @ y, dev, cfg["repeats"])[0]
        rates[name] = 2 * n ** 3 / seconds / 1e12
        suite.add(SECTION, f"torch.mm {n}^3 {name}", f"{rates[name]:.3g} TFLOP/s", "the card's rate")
    return rates


def rsc_step_flops(b: int, d_in: int, h: int, d: int, c: int) -> float:
    """GEMM flops of one RSC step: the encoder's (drcl_fast/runtime/floor.py) and the loss's two B x B x D."""
    return step_flops(b, d_in, h, d, c, trains_prior=False) + 2 * 1.5 * b * b * d


def rsc_step(suite, cfg: dict, fast: str, rates: dict[str, float]) -> None:
    dev = suite.device
    b, d_in, h, d, c = cfg["step"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d_in, generator=g).to(dev)
    targets = torch.eye(c)[torch.randint(0, c, (b,), generator=g)].to(dev)
    perm = torch.randperm(b, generator=g).to(dev)
    prior = initial_prior(d, c, seed=1).to(dev)
    pinv = ops.prior_pinv(prior)

    def make_step(backend: str) -> Callable[[], None]:
        encoder = seeded_encoder(d_in, h, d, seed=1, device=dev)
        optimizer = adam(encoder.parameters(), 1e-5)
        settings = RSCSettings(lr=1e-5, epochs=1, batch_size=b, hidden_dim=h, backend=backend)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            batch_loss(encoder, x, targets, perm, prior, pinv, 0.5, settings)[0].backward()
            optimizer.step()
        return step

    flops = rsc_step_flops(b, d_in, h, d, c)
    with cublas_tf32(False):
        base = timed(make_step("torch"), dev, cfg["repeats"])[0]
    case = f"RSC step B={b} d_in={d_in} H={h} D={d} C={c}"
    suite.add(SECTION, case, f"eager fp32 reference {base * 1e3:.1f} ms, {flops / base / 1e12:.3g} TFLOP/s "
                             f"({flops / base / 1e12 / rates.get('fp32', float('nan')):.0%} of fp32 mm)", "reference")
    variants = [("tf32", "triton"), ("fp32", "triton"), ("bf16", "triton"), ("tf32", "vendor")]
    for name, impl in variants:
        saved = linear_relu_module.DEFAULT_IMPL
        linear_relu_module.DEFAULT_IMPL = impl
        try:
            with precision(name), cublas_tf32(name != "fp32"):
                seconds = timed(make_step(fast), dev, cfg["repeats"])[0]
        finally:
            linear_relu_module.DEFAULT_IMPL = saved
        achieved = flops / seconds / 1e12
        share = achieved / rates.get(name, float("nan"))
        note = "bar: 2x" if (name, impl) == ("tf32", "triton") else ""
        suite.add(SECTION, case, f"fast {name} ({impl} GEMMs) {seconds * 1e3:.1f} ms: {base / seconds:.2f}x, "
                                 f"{achieved:.3g} TFLOP/s ({share:.0%} of {name} mm)", note)


def smoke_subset(data: MultiModalData) -> MultiModalData:
    """Two views and every tenth row of each split (every class stays): seconds under the interpreter."""
    pick = lambda split: Split([x[::10] for x in split.features[:2]], [y[::10] for y in split.labels[:2]])
    return MultiModalData(data.name, data.modalities[:2], pick(data.train), pick(data.valid), pick(data.test))


def mfeat_precision(suite, fast: str) -> None:
    """The demo's preset trained at each --precision the device runs, MAP@all against fp32's (the bar)."""
    data = smoke_subset(load_mfeat()) if suite.smoke else load_mfeat()
    small = {"epochs": 1, "spl_epochs": 1, "hidden_shape": 16, "output_shape": 16, "batch_size": 140} \
        if suite.smoke else {}
    # Under the interpreter (smoke) only fp32 runs: tf32 is a GPU format, and the interpreter has no bf16 tl.dot.
    names = PRECISIONS if suite.device == "cuda" else ("fp32",)
    maps, seconds = {}, {}
    for name in names:
        with tempfile.TemporaryDirectory() as out:
            cfg = DRCLConfig.preset("mfeat", out=out, quiet=True, overwrite=True, device=suite.device,
                                    backend=fast, precision=name, **small)
            cfg = cfg.replace(lr=cfg.lr[:data.num_modalities])
            started = time.perf_counter()
            maps[name] = fit(data, cfg, progress=False).metrics[0].mean
            seconds[name] = time.perf_counter() - started
    case = "mfeat MAP@all, fast path" + (" (smoke: 2 views, 1 epoch)" if suite.smoke else "")
    for name in names:
        gap = abs(maps[name] - maps["fp32"])
        suite.add(SECTION, f"{case}, --precision {name}",
                  f"{maps[name]:.4f} in {seconds[name]:.1f} s (fp32: {maps['fp32']:.4f} in {seconds['fp32']:.1f} s), "
                  f"difference {gap:.4f}", f"bar {MAP_BAR}: {'ok' if gap <= MAP_BAR else 'FAIL'}")


def guarded(suite, name: str, fn: Callable[[], object], section: str = SECTION) -> object:
    """Run one step; an exception becomes a FAIL row of `section` (traceback on stderr), so one GPU call
    reports them all."""
    start = time.perf_counter()
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - every failure is reported, then the next step runs
        traceback.print_exc()
        suite.add(section, name, f"ERROR {type(error).__name__}: {error}"[:300], "FAIL")
        return None
    finally:
        print(f"[{section}] {name}: {time.perf_counter() - start:.1f} s", flush=True)


def run(suite) -> None:
    cfg = SMOKE if suite.smoke else FULL
    with fast_dispatch(suite.device) as fast:
        guarded(suite, "correctness", lambda: check_correctness(suite, cfg, fast))
        guarded(suite, "loss speed", lambda: loss_speed(suite, cfg, fast))
        rates = guarded(suite, "matmul rates", lambda: matmul_rates(suite, cfg))
        guarded(suite, "RSC step", lambda: rsc_step(suite, cfg, fast, rates or {}))
        guarded(suite, "mfeat precision", lambda: mfeat_precision(suite, fast))
