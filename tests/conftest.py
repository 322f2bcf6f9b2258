from __future__ import annotations

import os
import signal
import warnings

import torch

# Triton kernels run on CPU tensors under the interpreter; it must be chosen
# before any kernel module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

from drcl_fast.config import DRCLConfig  # noqa: E402
from drcl_fast.data import load_mfeat  # noqa: E402
from drcl_fast.retrieval import cpp  # noqa: E402
from drcl_fast.training import encoder_step  # noqa: E402

# A GPU launch passes a Python float kernel argument as a float32 parameter (`.param .f32`),
# one annotated `x: tl.float64` as float64; the interpreter hands the kernel the Python float
# itself, exact in float64 arithmetic. DRCL_FAST_GPU_FLOAT_ARGS (on unless "0") makes the
# interpreter pack them as a GPU does, so a float64 path that needs an exact scalar fails here
# too, not only on a GPU (docs/kernels.md, "Kernel scalars").
GPU_FLOAT_ARGS = os.environ.get("DRCL_FAST_GPU_FLOAT_ARGS", "1") != "0"


def _pack_float_args_as_a_gpu_does() -> None:
    """Wrap the interpreter's launch: each Python float argument of a kernel becomes a scalar
    tensor of its parameter's type, float32 unless annotated (tl.float64, tl.float16, ...)."""
    import inspect

    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter
    from triton.runtime.jit import _normalize_ty

    if getattr(interpreter.GridExecutor, "_drcl_gpu_float_args", False):
        return
    types = {"fp32": (tl.float32, np.float32), "fp64": (tl.float64, np.float64), "fp16": (tl.float16, np.float16)}

    class TypedFloat:
        """A float argument and the parameter type a GPU launch gives it (until `_implicit_cvt`)."""

        def __init__(self, value: float, name: str):
            self.value, self.name = value, name

    def implicit_cvt(arg, _original=interpreter._implicit_cvt):
        if isinstance(arg, TypedFloat):
            ty, np_type = types[arg.name]
            return tl.tensor(interpreter.TensorHandle(np.array([arg.value], dtype=np_type), ty), ty)
        return _original(arg)

    def call(self, *args, _original=interpreter.GridExecutor.__call__, **kwargs):
        params = list(inspect.signature(self.fn).parameters)
        notes = {name: _normalize_ty(t) for name, t in inspect.get_annotations(self.fn).items()}

        def pack(name, value):
            if not isinstance(value, float) or notes.get(name) == "constexpr":
                return value
            name_ty = notes.get(name) or "fp32"
            if name_ty not in types:
                raise TypeError(f"{self.fn.__name__}: float argument {name} annotated {name_ty}")
            return TypedFloat(value, name_ty)

        args = [pack(name, value) for name, value in zip(params, args)] + list(args[len(params):])
        kwargs = {name: pack(name, value) for name, value in kwargs.items()}
        return _original(self, *args, **kwargs)

    interpreter._implicit_cvt = implicit_cvt
    interpreter.GridExecutor.__call__ = call
    interpreter.GridExecutor._drcl_gpu_float_args = True


if GPU_FLOAT_ARGS and os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None:
    _pack_float_args_as_a_gpu_does()

# Set by `make test` and CI: what would otherwise skip tests must be there.
REQUIRE_EXTENSIONS = os.environ.get("DRCL_FAST_REQUIRE_EXTENSIONS") == "1"


def missing_extensions() -> list[str]:
    """The optional parts this process lacks, each with what to do about it."""
    missing = []
    for name, available in (("retrieval._map_cpp", cpp.AVAILABLE), ("training._step_cpp", encoder_step.NATIVE_AVAILABLE)):
        if not available:
            missing.append(f"the C++ extension drcl_fast.{name} is not built (reinstall with `pip install "
                           f"--no-build-isolation -e .` and read the compiler's error, or `make clean test`)")
    if importlib.util.find_spec("triton") is None:
        missing.append("Triton is not installed (`pip install -e '.[test]'`)")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_EXTENSIONS and missing_extensions():
        raise pytest.UsageError("DRCL_FAST_REQUIRE_EXTENSIONS=1, but " + "; ".join(missing_extensions()))


@pytest.fixture(autouse=True)
def signal_handlers_as_found(request: pytest.FixtureRequest):
    """Each test starts with the handlers the last left: one that changes SIGINT's or SIGTERM's and does
    not put it back would turn the stop tests' Ctrl-C into nothing (fit replaces only the default)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        if signal.getsignal(signum) is not handler:
            warnings.warn(f"{request.node.nodeid} left {signal.Signals(signum).name}'s handler changed "
                          f"({signal.getsignal(signum)!r}); put back")
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def mfeat():
    return load_mfeat()


@pytest.fixture
def tiny_config(tmp_path) -> DRCLConfig:
    """A seconds-long run on the bundled data: small encoders, few epochs."""
    return DRCLConfig.preset("mfeat", epochs=4, hidden_shape=32, output_shape=16, batch_size=200,
                             out=str(tmp_path / "out"), quiet=True, device="cpu")
