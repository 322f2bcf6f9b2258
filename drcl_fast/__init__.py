"""drcl_fast: Deep Reversible Consistency Learning (DRCL) for cross-modal retrieval.

Public names are imported lazily so that `import drcl_fast` stays cheap and a
user of one layer (say, only `evaluate_map`) does not pay for the others.
"""
from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

# From a source tree (PYTHONPATH=.), drcl_fast.kernels is the repository's
# top-level kernels/ folder; an installed package maps it there in pyproject.toml.
_repo_root = Path(__file__).resolve().parent.parent
if (_repo_root / "kernels" / "__init__.py").is_file() and str(_repo_root) not in __path__:
    __path__.append(str(_repo_root))

_PUBLIC = {
    "Solver": "drcl_fast.solver",
    "DRCLConfig": "drcl_fast.config",
    "DRCL": "drcl_fast.api",
    "evaluate_map": "drcl_fast.retrieval",
    "evaluate_directions": "drcl_fast.retrieval",
    "load_dataset": "drcl_fast.data",
}

__all__ = sorted(_PUBLIC) + ["ops"]


def __getattr__(name: str):
    if name == "ops":
        return importlib.import_module("drcl_fast.ops")
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'drcl_fast' has no attribute {name!r}")
