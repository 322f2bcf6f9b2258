"""The Triton kernels' self-check: run each once per device on a tiny input and compare with the reference.

The first time dispatch is about to hand out an op's "triton" implementation for
a device (per op, per device index), that op's probe runs: the Triton
implementation and the reference on a small, fixed input (odd sizes, a local
``torch.Generator``), compared within the op's tolerance. The verdict is kept for
the process, so the check costs one tiny call per op and device.

Each op's probe lives beside its kernels (``kernels/<op>.py``; the retrieval ops'
in ``kernels/map_ranked.py`` and ``kernels/map_topk.py``) and is registered when
that module is imported. Those modules import Triton, so they are imported lazily,
and a probe may not be registered yet when its check runs: the check then imports
the op's module named in ``PROBE_MODULES``.

A verdict fails when the GPU is one Triton does not support (compute capability
below 7.0), when the kernel does not compile (``CompilationError``, ``PTXASError``),
runs out of resources (``OutOfResources``) or raises anything else, or when its
result differs from the reference's beyond the tolerance. ``backends.choose``
then falls back, for "auto", to the next implementation "auto" would pick, with
one ``RuntimeWarning`` per op and device; an explicit ``backend="triton"`` gets a
``BackendError`` carrying the same message, never Triton's traceback.

Nothing runs while ``torch.compile`` traces: a known verdict is used there, an
unknown one trusts the kernel (``machine.check_backends`` runs the checks eagerly
before training). A probe leaves global state as it found it: its inputs come from
its own generator, gradients are taken with ``torch.autograd.grad`` on its own
leaves, and grad mode is restored. ``verdicts()`` shows the cache, ``reset()`` empties it.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch

# A probe: f(device) -> (fast, reference, tolerance). fast and reference are a
# tensor, a sequence of tensors or a name -> tensor mapping, alike in structure;
# each fast tensor passes if max |fast - ref| <= tolerance * max |ref| (1 where ref is
# all zeros), with NaN exactly where the reference has NaN.
Outputs = Union[torch.Tensor, Sequence[torch.Tensor], Mapping[str, torch.Tensor]]
Probe = Callable[[torch.device], tuple[Outputs, Outputs, float]]

# Where each Triton op's probe lives: beside its kernels, registered when that module is imported.
PROBE_MODULES = {"gce_loss": "drcl_fast.kernels.gce", "drcl_loss": "drcl_fast.kernels.drcl_loss",
                 "linear_relu": "drcl_fast.kernels.linear_relu", "mixup_project": "drcl_fast.kernels.mixup_project",
                 "evaluate_map": "drcl_fast.kernels.map_ranked", "precision_recall": "drcl_fast.kernels.map_ranked",
                 "topk": "drcl_fast.kernels.map_topk"}

OLDEST_CAPABILITY = (7, 0)   # Triton compiles for Volta and newer
INTERPRETER = "CPU (Triton interpreter)"


@dataclass(frozen=True)
class Verdict:
    """The self-check's outcome for one op on one device."""
    op: str
    device: torch.device
    where: str                    # the GPU's name, or INTERPRETER
    ok: bool
    reason: str = ""              # why it failed, for the messages
    error: BaseException | None = None   # the exception the probe raised, if any

    @property
    def place(self) -> str:
        """The device for the messages: "NVIDIA H200 (cuda:0)", "CPU (Triton interpreter)"."""
        return f"{self.where} ({self.device})" if self.device.type == "cuda" else self.where

    def refusal(self) -> str:
        """The BackendError message for an explicit backend='triton'."""
        return (f"{self.op}: backend 'triton' failed its self-check on {self.place}: "
                f"{self.reason}; pass backend='auto' to use the next fastest implementation")

    def fallback(self, name: str) -> str:
        """The RuntimeWarning message when "auto" passes over the kernel for `name`."""
        return (f"{self.op}: the Triton kernel failed its self-check on {self.place}: "
                f"{self.reason}; using {name!r} for {self.op} on this device")


_probes: dict[str, Probe] = {}
_verdicts: dict[tuple[str, torch.device], Verdict] = {}
_warned: set[tuple[str, torch.device]] = set()
_lock = threading.RLock()
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def register(op: str, probe: Probe) -> Probe:
    """Register `op`'s probe: called at the bottom of its kernel module (``PROBE_MODULES[op]``), beside its kernels."""
    _probes[op] = probe
    return probe


def probes() -> dict[str, Probe]:
    """Every op's probe, by op: each module of ``PROBE_MODULES`` that imports here (not without Triton) is imported."""
    for module in dict.fromkeys(PROBE_MODULES.values()):
        try:
            importlib.import_module(module)
        except ImportError:   # no Triton here: its kernels, and so their probes, cannot run
            pass
    return dict(_probes)


def verdicts() -> dict[tuple[str, torch.device], Verdict]:
    """The verdicts reached so far, by (op, device)."""
    with _lock:
        return dict(_verdicts)


def reset() -> None:
    """Forget every verdict and warning (tests; or after changing the kernels' precision)."""
    with _lock:
        _verdicts.clear()
        _warned.clear()


def normalize(device: torch.device | str) -> torch.device:
    """The device with its index: a bare "cuda" is the current CUDA device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name (torch.cuda.get_device_name), or INTERPRETER for the CPU."""
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except Exception:   # noqa: BLE001 - a name is only for the message
            return "an unnamed CUDA device"
    return INTERPRETER if device.type == "cpu" else f"a {device.type} device"


def capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device; None elsewhere."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def verdict(op: str, device: torch.device | str) -> Verdict | None:
    """The self-check's verdict for `op` on `device`: run now if not known yet.

    None while torch.compile traces and no verdict is known (the kernel is then
    trusted). An op without a probe passes on any GPU Triton supports.
    """
    device = normalize(device)
    key = (op, device)
    known = _verdicts.get(key)
    if known is not None or _is_compiling():
        return known
    with _lock:
        if key not in _verdicts:
            _verdicts[key] = _run(op, device)
        return _verdicts[key]


def warn_fallback(found: Verdict, name: str) -> None:
    """Say once per op and device that "auto" passes over the failed kernel, for `name`.

    Not while torch.compile traces (a warning would break the graph): the eager call
    that reached the verdict has said it, or machine.check_backends has.
    """
    if _is_compiling():
        return
    key = (found.op, found.device)
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(found.fallback(name), RuntimeWarning, stacklevel=4)


def _run(op: str, device: torch.device) -> Verdict:
    where = device_name(device)
    cap = capability(device)
    if cap is not None and cap < OLDEST_CAPABILITY:
        return Verdict(op, device, where, False,
                       f"compute capability {cap[0]}.{cap[1]} is below {OLDEST_CAPABILITY[0]}.{OLDEST_CAPABILITY[1]}, "
                       f"the oldest Triton supports")
    try:
        # Only when none is registered: a probe put in _probes (a test's) stays.
        if op not in _probes and op in PROBE_MODULES:
            importlib.import_module(PROBE_MODULES[op])
        probe = _probes.get(op)
        if probe is None:
            return Verdict(op, device, where, True)
        with torch.inference_mode(False), torch.enable_grad():
            fast, ref, tolerance = probe(device)
        problem = _mismatch(fast, ref, tolerance)
    except Exception as exc:   # noqa: BLE001 - every failure of the kernel is a verdict, not a crash
        return Verdict(op, device, where, False, describe(exc), exc)
    if problem:
        return Verdict(op, device, where, False, problem)
    return Verdict(op, device, where, True)


# ---------------------------------------------------------------- comparing and describing


def _pairs(fast: Outputs, ref: Outputs) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    if isinstance(ref, torch.Tensor):
        return [("output", fast, ref)]
    if isinstance(ref, Mapping):
        return [(name, fast[name], ref[name]) for name in ref]
    if len(fast) != len(ref):
        raise ValueError(f"the kernel gave {len(fast)} outputs, the reference {len(ref)}")
    return [(f"output {i}", f, r) for i, (f, r) in enumerate(zip(fast, ref))]


def _mismatch(fast: Outputs, ref: Outputs, tolerance: float) -> str:
    """"" when every output agrees within `tolerance`; otherwise what differs, and by how much."""
    for name, f, r in _pairs(fast, ref):
        f, r = torch.as_tensor(f).detach().double().cpu(), torch.as_tensor(r).detach().double().cpu()
        if f.shape != r.shape:
            return f"its {name} has shape {tuple(f.shape)}, the reference's {tuple(r.shape)}"
        nan = torch.isnan(r)
        if not torch.equal(torch.isnan(f), nan):
            return f"its {name} has NaN where the reference has none, or none where it has NaN"
        f, r = f[~nan], r[~nan]
        if r.numel() == 0:
            continue
        scale = float(r.abs().max())
        scale = scale if scale > 0 else 1.0
        error = float((f - r).abs().max()) / scale
        if not error <= tolerance:   # also NaN and inf
            return (f"its {name} differs from the reference's by {error:.3g} of its largest magnitude "
                    f"(tolerance {tolerance:.3g})")
    return ""


def _triton_dir() -> str | None:
    module = sys.modules.get("triton")
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else None


def _from_triton_module(name: str) -> bool:
    return name == "triton" or name.startswith("triton.")


def raised_inside_triton(exc: BaseException) -> bool:
    """Whether `exc` is one of Triton's exception types or passed through a frame of Triton's code."""
    if any(_from_triton_module(cls.__module__) for cls in type(exc).__mro__):
        return True
    root = _triton_dir()
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if _from_triton_module(str(frame.f_globals.get("__name__", ""))):
            return True
        if root and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
            return True
        tb = tb.tb_next
    return False


def _kind(exc: BaseException) -> str:
    names = {cls.__name__ for cls in type(exc).__mro__ if _from_triton_module(cls.__module__)}
    if names & {"CompilationError", "PTXASError"}:
        return "Triton could not compile the kernel"
    if "OutOfResources" in names:
        return "the kernel needs more resources than the GPU has"
    if raised_inside_triton(exc):
        return "Triton raised an error"
    return "the kernel's call raised an error"


def _summary(exc: BaseException, limit: int = 300) -> str:
    """The exception's message in one line. A CompilationError's text is "at L:C:", the kernel's
    source and a caret, then the reason: its `error_message` (or its cause) is what says why."""
    text = getattr(exc, "error_message", None)
    if not text and "CompilationError" in {cls.__name__ for cls in type(exc).__mro__} and exc.__cause__:
        text = f"{type(exc.__cause__).__name__}: {exc.__cause__}"
    lines = [line.strip() for line in str(text or exc).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """One line for the messages: what kind of failure, the exception's type and its message."""
    summary = _summary(exc)
    return f"{_kind(exc)} ({type(exc).__name__}{': ' + summary if summary else ''})"
