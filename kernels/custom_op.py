"""Registering a fused op for ``torch.compile``: the eager Function, or its custom op while torch.compile traces.

Each fused op is a ``torch.autograd.Function`` for eager calls and a
``torch.library.custom_op`` pair (a forward that returns the outputs and what the
backward needs, a backward op, ``register_autograd`` joining them, ``register_fake``
giving shapes to the compiler), registered in the op's own file. Both call the same
plain forward/backward functions, so the two paths cannot drift. The custom op is
used only while torch.compile traces: its Python dispatch costs more per call.
"""
from __future__ import annotations

from typing import Callable

import torch

# torch.library.custom_op came with torch 2.4.
AVAILABLE = hasattr(torch.library, "custom_op")

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def eager_or_compiled(eager: Callable, compiled: Callable | None) -> Callable:
    """`eager` (an autograd Function's entry) normally; `compiled` (its custom op) while torch.compile traces."""
    if compiled is None:
        return eager
    return lambda *args: (compiled if _is_compiling() else eager)(*args)
