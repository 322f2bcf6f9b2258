"""The Triton kernels' runtime self-check (drcl_fast.runtime.selfcheck), through dispatch.

Failures are injected by replacing a kernel's launch object (kernel[grid](...)) with
one that raises from a frame of Triton's own code, or a kernel module's entry point
with one that returns a wrong value. On the CPU the Triton interpreter stands in for
a GPU: "auto" is made to prefer Triton there (AUTO_PREFERENCE), so its fallback
(the reference, for these small inputs) can be compared with backend="torch".
Compute capability and GPU names are simulated through torch.cuda's functions.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from drcl_fast import ops
from drcl_fast.errors import BackendError
from drcl_fast.retrieval import dispatch, evaluate_map
from drcl_fast.retrieval import reference as retrieval_reference
from drcl_fast.retrieval import triton as triton_backend
from drcl_fast.retrieval.pr import precision_recall
from drcl_fast.runtime import backends, machine, selfcheck
from tests.support import REPO

HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA0 = torch.device("cuda", 0)   # a simulated GPU: only torch.cuda's queries are answered, nothing runs on it


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No verdicts or warnings from earlier tests, none left for later ones; "auto" prefers Triton."""
    selfcheck.reset()
    monkeypatch.setattr(backends, "_already_said", set())
    monkeypatch.setitem(backends.AUTO_PREFERENCE, DEVICE.type, ("triton", "restructured", "torch"))
    yield
    selfcheck.reset()


# ---------------------------------------------------------------- the ops, as a caller runs them

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call_gce(backend):
    g = _gen(1)
    logits = torch.randn(6, 4, generator=g).to(DEVICE)
    targets = torch.eye(4)[torch.randint(0, 4, (6,), generator=g)].to(DEVICE)
    return ops.gce_loss(logits, targets, 0.5, backend=backend)


def _call_loss(backend):
    g = _gen(2)
    f = torch.nn.functional.normalize(torch.randn(7, 16, generator=g), dim=1)
    y = torch.eye(3)[torch.randint(0, 3, (7,), generator=g)]
    w = torch.randn(16, 3, generator=g)
    f, y, w = f.to(DEVICE), y.to(DEVICE), w.to(DEVICE)
    return torch.stack(ops.drcl_loss_terms(f, y, f @ w, torch.linalg.pinv(w), 0.5, backend=backend))


def _call_linear_relu(backend):
    g = _gen(3)
    x, w, b = torch.randn(6, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    return ops.linear_relu(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), backend=backend)


def _call_mixup_project(backend):
    g = _gen(4)
    hidden, head, prior = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)
    perm = torch.randperm(6, generator=g)
    mixed, logits = ops.mixup_project(hidden.to(DEVICE), head.to(DEVICE), perm.to(DEVICE), 0.8, prior.to(DEVICE),
                                      backend=backend)
    return torch.cat([mixed.flatten(), logits.flatten()])


def _ranking(seed: int):
    rng = np.random.default_rng(seed)
    q, g = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(9, 3)).astype(np.float32)
    return [torch.as_tensor(a).to(DEVICE) for a in (q, rng.integers(0, 3, 4), g, rng.integers(0, 3, 9))]


def _call_map(backend):
    return torch.tensor(evaluate_map(*_ranking(5), k=4, backend=backend))


def _call_pr(backend):
    return torch.as_tensor(precision_recall(*_ranking(6), cutoffs=[1, 3, 9], backend=backend).precision)


@dataclass
class Op:
    name: str
    call: Callable[[str], torch.Tensor]            # runs the op with backend=...
    pick: Callable[[str, torch.device], Callable]  # what dispatch hands out for (backend, device)
    triton: Callable[[], Callable]                 # the registered Triton implementation
    kernel: tuple[str, str]                        # (module, name) of a kernel launched as kernel[grid](...)
    entry: tuple[str, str, Callable]               # (module, name, wrapper): an entry point made to lie
    fallback: str                                  # what "auto" takes when Triton fails (the message names it)

    def __str__(self) -> str:
        return self.name


def _training(name: str, call, kernel, entry, fallback="torch") -> Op:
    registry = ops._REGISTRIES[name]
    return Op(name, call, lambda backend, device: ops._pick(name, backend, device),
              lambda: registry["triton"], kernel, entry, fallback)


def _evaluator(name: str, function: str, call, kernel, entry) -> Op:
    return Op(name, call, lambda backend, device: getattr(dispatch, function)(backend, device),
              lambda: getattr(triton_backend, function), kernel, entry, "torch")


def _shifted(by):
    return lambda real: lambda *args, **kwargs: by(real(*args, **kwargs))


K = "drcl_fast.kernels."
OPS = [
    _training("gce_loss", _call_gce, (K + "gce", "_gce_kernel"),
              (K + "gce", "gce_forward", _shifted(lambda out: (out[0] + 0.5, out[1])))),
    _training("drcl_loss", _call_loss, (K + "drcl_loss", "_pair_kernel"),
              (K + "drcl_loss", "mse", _shifted(lambda out: (out[0] * 2 + 0.1, out[1]))), fallback="restructured"),
    _training("linear_relu", _call_linear_relu, (K + "matmul", "_launch"),
              (K + "linear_relu", "matmul", _shifted(lambda out: out * 1.5))),
    _training("mixup_project", _call_mixup_project, (K + "mixup_project", "_mix_project_fwd"),
              (K + "mixup_project", "mixup_project_forward",
               _shifted(lambda out: (out[0], out[1] + 0.25, *out[2:])))),
    _evaluator("evaluate_map", "average_precisions", _call_map, (K + "map_topk", "_topk_kernel"),
               (K + "map_ranked", "average_precisions", _shifted(lambda ap: ap + 0.01))),
    _evaluator("precision_recall", "hits_at", _call_pr, (K + "map_ranked", "_walk_kernel"),
               (K + "map_ranked", "hits_at", _shifted(lambda hits: hits + 1))),
]


# ---------------------------------------------------------------- injected failures

def _in_triton(exc: BaseException) -> Callable:
    """A function whose frame is Triton's code (its module and file are Triton's) and that raises `exc`."""
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "runtime", "_selfcheck_test_launcher.py")
    namespace = {"__name__": "triton.runtime._selfcheck_test_launcher", "exc": exc}
    exec(compile("def launch(*args, **kwargs):\n    raise exc\n", path, "exec"), namespace)
    return namespace["launch"]


class FakeKernel:
    """Stands in for a @triton.jit kernel: kernel[grid](...) raises from a Triton frame."""

    def __init__(self, exc: BaseException, from_triton: bool = True):
        self.launches = 0
        if from_triton:
            self._launch = _in_triton(exc)
        else:
            def launch(*args, **kwargs):
                raise exc
            self._launch = launch

    def __getitem__(self, grid):
        self.launches += 1
        return self._launch


def _compilation_error():
    from triton.compiler.errors import CompilationError
    src = "def _kernel(x_ptr):\n    acc = tl.dot(a, b)\n"
    return CompilationError(src, ast.parse(src).body[0].body[0], "tl.dot needs operands of at least 16 x 16")


def _out_of_resources():
    from triton.runtime.errors import OutOfResources
    return OutOfResources(232448, 101376, "shared memory")


FAILURES = {
    "compile": (lambda: FakeKernel(_compilation_error()),
                "Triton could not compile the kernel (CompilationError: tl.dot needs operands of at least 16 x 16)"),
    "resources": (lambda: FakeKernel(_out_of_resources()),
                  "the kernel needs more resources than the GPU has (OutOfResources: out of resource: "
                  "shared memory, Required: 232448, Hardware limit: 101376"),
    "triton-error": (lambda: FakeKernel(RuntimeError("Triton Error [CUDA]: misaligned address")),
                     "Triton raised an error (RuntimeError: Triton Error [CUDA]: misaligned address)"),
    "other-error": (lambda: FakeKernel(ValueError("bad launch grid"), from_triton=False),
                    "the kernel's call raised an error (ValueError: bad launch grid)"),
    "wrong-value": (None, "differs from the reference's by"),
}


def inject(op: Op, failure: str, monkeypatch) -> str:
    """Break `op`'s kernel as `failure` says; returns the text its messages must hold."""
    make, text = FAILURES[failure]
    if make is None:
        module, name, wrapper = op.entry
        module = importlib.import_module(module)
        monkeypatch.setattr(module, name, wrapper(getattr(module, name)))
    else:
        module, name = op.kernel
        monkeypatch.setattr(importlib.import_module(module), name, make())
    return text


def count_runs(monkeypatch) -> list[str]:
    """The ops whose self-check runs from now on."""
    runs = []
    real = selfcheck._run
    monkeypatch.setattr(selfcheck, "_run", lambda op, device: runs.append(op) or real(op, device))
    return runs


def runtime_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("op", OPS, ids=str)
def test_a_failing_kernel_is_passed_over_by_auto_once_and_refused_when_asked_for(op, failure, monkeypatch):
    text = inject(op, failure, monkeypatch)
    runs = count_runs(monkeypatch)
    want = op.call("torch")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = op.call("auto")
    said = runtime_warnings(caught)
    assert len(said) == 1, said
    assert said[0].startswith(f"{op.name}: the Triton kernel failed its self-check on "
                              f"{selfcheck.device_name(selfcheck.normalize(DEVICE))}")
    assert text in said[0] and f"using {op.fallback!r}" in said[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert runs.count(op.name) == 1
    verdict = selfcheck.verdicts()[(op.name, selfcheck.normalize(DEVICE))]
    assert not verdict.ok and text in verdict.reason

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # said once only
        torch.testing.assert_close(op.call("auto"), want, rtol=0, atol=0)
    assert op.pick("auto", DEVICE) is not op.triton()

    with pytest.raises(BackendError) as refused:
        op.call("triton")
    message = str(refused.value)
    assert message.startswith(f"{op.name}: backend 'triton' failed its self-check on ") and text in message
    assert refused.value.__cause__ is None and refused.value.__context__ is None   # no traceback of Triton's
    assert not selfcheck.raised_inside_triton(refused.value)
    assert runs.count(op.name) == 1                                                  # not checked again


def test_explicit_triton_first_then_auto_still_warns_once(monkeypatch):
    op = OPS[0]
    text = inject(op, "compile", monkeypatch)
    with pytest.raises(BackendError, match="CompilationError"):
        op.call("triton")
    with pytest.warns(RuntimeWarning, match="gce_loss: the Triton kernel failed its self-check") as caught:
        op.call("auto")
    assert len(runtime_warnings(caught)) == 1 and text in runtime_warnings(caught)[0]


def test_the_fake_kernels_really_launch(monkeypatch):
    """The injection reaches the kernel: the probe launched the fake, whose frame counts as Triton's."""
    fake = FAILURES["triton-error"][0]()
    monkeypatch.setattr(importlib.import_module(K + "gce"), "_gce_kernel", fake)
    verdict = selfcheck.verdict("gce_loss", DEVICE)
    assert fake.launches == 1 and not verdict.ok
    assert selfcheck.raised_inside_triton(verdict.error)


@pytest.mark.parametrize("op", OPS, ids=str)
def test_a_sound_kernel_passes_and_is_used(op):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        picked = op.pick("auto", DEVICE)
        assert picked is op.triton()
        got, want = op.call("auto"), op.call("torch")
        assert op.pick("triton", DEVICE) is op.triton()
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), rtol=1e-4, atol=1e-5)
    verdict = selfcheck.verdicts()[(op.name, selfcheck.normalize(DEVICE))]
    assert verdict.ok and verdict.reason == ""


@pytest.mark.parametrize("op", OPS, ids=str)
def test_each_probe_is_cheap_and_sensitive(op, monkeypatch):
    """Each probe passes on the real kernel, fails on a wrong value, and runs quickly under the interpreter."""
    import time
    start = time.perf_counter()
    assert selfcheck.verdict(op.name, DEVICE).ok
    if DEVICE.type == "cpu":
        assert time.perf_counter() - start < 2.0   # well under a second on a quiet core; slack for a busy one
    selfcheck.reset()
    inject(op, "wrong-value", monkeypatch)
    assert "differs from the reference" in selfcheck.verdict(op.name, DEVICE).reason


def simulate_gpu(monkeypatch, capability=(6, 1), name="Tesla P100-PCIE-16GB"):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("op", OPS, ids=str)
def test_a_gpu_older_than_volta_is_a_failed_check(op, monkeypatch):
    simulate_gpu(monkeypatch)
    for probe in list(selfcheck.probes()):
        monkeypatch.setitem(selfcheck._probes, probe, lambda device: pytest.fail("a probe ran"))
    with pytest.warns(RuntimeWarning) as caught:
        picked = op.pick("auto", CUDA0)
    said = runtime_warnings(caught)
    assert len(said) == 1
    assert said[0].startswith(f"{op.name}: the Triton kernel failed its self-check on Tesla P100-PCIE-16GB (cuda:0): "
                              f"compute capability 6.1 is below 7.0")
    assert picked is op.pick(op.fallback, CUDA0)
    with pytest.raises(BackendError, match=rf"^{op.name}: backend 'triton' failed its self-check on "
                                           r"Tesla P100-PCIE-16GB \(cuda:0\): compute capability 6.1"):
        op.pick("triton", CUDA0)


def test_check_backends_runs_the_checks_before_training(monkeypatch):
    runs = count_runs(monkeypatch)
    machine.check_backends("triton", DEVICE)
    assert sorted(runs) == sorted(op.name for op in OPS)
    assert all(v.ok for v in selfcheck.verdicts().values())
    machine.check_backends("triton", DEVICE)   # known: not checked again
    assert len(runs) == len(OPS)


def test_check_backends_refuses_or_warns_about_a_failing_kernel(monkeypatch):
    inject(OPS[2], "resources", monkeypatch)     # the GEMM: linear_relu (mixup_project's GEMM too)
    with pytest.raises(BackendError, match="linear_relu: backend 'triton' failed its self-check.*OutOfResources"):
        machine.check_backends("triton", DEVICE)
    selfcheck.reset()
    with pytest.warns(RuntimeWarning) as caught:
        machine.check_backends("auto", DEVICE)
    said = runtime_warnings(caught)
    assert {message.split(":")[0] for message in said} == {"linear_relu", "mixup_project"}
    assert all("OutOfResources" in message for message in said)


def test_check_backends_on_an_old_gpu(monkeypatch):
    simulate_gpu(monkeypatch, capability=(5, 2), name="Tesla M60")
    with pytest.raises(BackendError, match="compute capability 5.2 is below 7.0"):
        machine.check_backends("triton", CUDA0)
    with pytest.warns(RuntimeWarning) as caught:
        machine.check_backends("auto", CUDA0)
    assert len(runtime_warnings(caught)) == len(OPS)
    assert all("Tesla M60" in message for message in runtime_warnings(caught))


def test_without_triton_auto_falls_back_with_one_warning_and_triton_is_refused(monkeypatch):
    simulate_gpu(monkeypatch, capability=(9, 0), name="NVIDIA H200")
    monkeypatch.setitem(ops._REGISTRIES["gce_loss"], "triton", None)           # as in a process without Triton
    monkeypatch.setattr(triton_backend, "AVAILABLE", False)
    for op in (OPS[0], OPS[4]):
        with pytest.warns(RuntimeWarning) as caught:
            assert op.pick("auto", CUDA0) is op.pick("torch", CUDA0)
        said = runtime_warnings(caught)
        assert len(said) == 1 and "'triton' backend is not available for cuda tensors" in said[0]
        with pytest.raises(BackendError, match="backend 'triton' is not available here"):
            op.pick("triton", CUDA0)
    assert not selfcheck.verdicts()


def test_verdicts_are_per_device_index(monkeypatch):
    simulate_gpu(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: (6, 1) if torch.device(device).index == 0 else (9, 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    passing = torch.ones(3)
    monkeypatch.setitem(selfcheck._probes, "gce_loss", lambda device: (passing, passing, 0.0))
    with pytest.warns(RuntimeWarning, match="cuda:0"):
        assert ops._pick("gce_loss", "auto", CUDA0) is reference_gce()
    triton_gce = ops._REGISTRIES["gce_loss"]["triton"]
    assert ops._pick("gce_loss", "auto", torch.device("cuda", 1)) is triton_gce
    assert ops._pick("gce_loss", "auto", torch.device("cuda")) is triton_gce   # the current device: 1
    assert {device for op, device in selfcheck.verdicts()} == {torch.device("cuda", 0), torch.device("cuda", 1)}
    assert not selfcheck.verdicts()[("gce_loss", CUDA0)].ok
    assert selfcheck.verdicts()[("gce_loss", torch.device("cuda", 1))].ok


def reference_gce():
    return ops._REGISTRIES["gce_loss"]["torch"]


def test_reset_forgets_verdicts_and_warnings(monkeypatch):
    op = OPS[0]
    inject(op, "triton-error", monkeypatch)
    with pytest.warns(RuntimeWarning):
        op.call("auto")
    assert selfcheck.verdicts()
    selfcheck.reset()
    assert not selfcheck.verdicts()
    with pytest.warns(RuntimeWarning, match="misaligned address"):   # checked and said again
        op.call("auto")


def test_no_check_while_torch_compile_traces(monkeypatch):
    """Tracing uses a verdict already reached, and trusts the kernel where there is none."""
    monkeypatch.setattr(selfcheck, "_is_compiling", lambda: True)
    runs = count_runs(monkeypatch)
    assert ops._pick("gce_loss", "triton", DEVICE) is ops._REGISTRIES["gce_loss"]["triton"]
    assert not runs and not selfcheck.verdicts()
    monkeypatch.setattr(selfcheck, "_is_compiling", lambda: False)
    inject(OPS[0], "compile", monkeypatch)
    with pytest.warns(RuntimeWarning):
        ops._pick("gce_loss", "auto", DEVICE)                   # reached eagerly
    monkeypatch.setattr(selfcheck, "_is_compiling", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert ops._pick("gce_loss", "auto", DEVICE) is ops._REGISTRIES["gce_loss"]["torch"]
    with pytest.raises(BackendError, match="CompilationError"):
        ops._pick("gce_loss", "triton", DEVICE)
    assert runs == ["gce_loss"]


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
def test_a_compiled_call_neither_checks_nor_breaks_the_graph(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    runs = count_runs(monkeypatch)
    g = _gen(7)
    logits, targets = torch.randn(6, 4, generator=g).to(DEVICE), torch.eye(4)[torch.arange(6) % 4].to(DEVICE)
    compiled = torch.compile(lambda lg, t: ops.gce_loss(lg, t, 0.5), fullgraph=True)
    torch.testing.assert_close(compiled(logits, targets), ops.gce_loss(logits, targets, 0.5, backend="torch"))
    assert not runs   # traced without a check; the Triton custom op ran
    torch._dynamo.reset()


def test_a_check_leaves_global_state_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.no_grad():
        for op in OPS:
            assert selfcheck.verdict(op.name, DEVICE).ok, selfcheck.verdict(op.name, DEVICE).reason
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    selfcheck.reset()
    with torch.inference_mode():   # evaluation may run there; the probes take gradients all the same
        assert selfcheck.verdict("linear_relu", DEVICE).ok
        assert selfcheck.verdict("evaluate_map", DEVICE).ok


def test_describe_keeps_a_compilation_errors_reason_not_its_source():
    from triton.compiler.errors import CompilationError
    assert selfcheck.describe(_compilation_error()) == \
        "Triton could not compile the kernel (CompilationError: tl.dot needs operands of at least 16 x 16)"
    src = "def k():\n    x = y\n"
    try:
        try:
            raise NameError("y is not defined")
        except NameError as cause:
            raise CompilationError(src, ast.parse(src).body[0].body[0], None) from cause
    except CompilationError as wrapped:
        assert selfcheck.describe(wrapped) == \
            "Triton could not compile the kernel (CompilationError: NameError: y is not defined)"
    assert len(selfcheck.describe(RuntimeError("x" * 1000 + "\nsecond line"))) < 400


def test_evaluator_probe_matches_the_reference_exactly():
    """The rankings the evaluator's probe uses are exact: the reference agrees with itself across dtypes."""
    from drcl_fast.kernels.probe_inputs import ranking_case
    args = ranking_case(torch.device("cpu"), 201, 3, 7, False)
    as64 = [t.double() if t.is_floating_point() else t for t in args]
    torch.testing.assert_close(retrieval_reference.average_precisions(*args),
                               retrieval_reference.average_precisions(*as64), rtol=0, atol=0)


# ---------------------------------------------------------------- probes registered beside lazily imported kernels

def run_fresh(code: str) -> str:
    """Run `code` in a new Python process on the Triton interpreter (nothing imported yet); returns its stdout."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_check_imports_the_kernel_module_that_holds_the_probe():
    """The retrieval kernels are imported on first use, so their probes may be unregistered when the check
    runs: it imports the op's module (PROBE_MODULES) and runs the real probe, not an empty pass."""
    out = run_fresh("""
        import sys
        import drcl_fast.retrieval
        from drcl_fast.runtime import selfcheck
        assert "drcl_fast.kernels.map_ranked" not in sys.modules, "imported before the check"
        found = selfcheck.verdict("evaluate_map", "cpu")
        assert found.ok, found.reason
        assert "drcl_fast.kernels.map_ranked" in sys.modules
        assert selfcheck._probes["evaluate_map"].__module__ == "drcl_fast.kernels.map_ranked"
        print("ran the real probe")
    """)
    assert "ran the real probe" in out


def test_a_registered_probe_is_not_replaced_by_the_lazy_import():
    """A probe already in _probes (a test's) is the one that runs: the op's module is not imported over it."""
    out = run_fresh("""
        import sys
        import torch
        from drcl_fast.runtime import selfcheck
        calls = []
        def lying(device):
            calls.append(device)
            return torch.ones(2), torch.zeros(2), 0.0
        selfcheck._probes["evaluate_map"] = lying
        found = selfcheck.verdict("evaluate_map", "cpu")
        assert calls == [torch.device("cpu")] and not found.ok and "differs" in found.reason, found
        assert selfcheck._probes["evaluate_map"] is lying
        assert "drcl_fast.kernels.map_ranked" not in sys.modules
        print("kept the registered probe")
    """)
    assert "kept the registered probe" in out


def test_probes_lists_every_op_whose_kernels_import():
    assert set(selfcheck.probes()) >= set(selfcheck.PROBE_MODULES)
