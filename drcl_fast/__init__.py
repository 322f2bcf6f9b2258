"""drcl_fast: Deep Reversible Consistency Learning (DRCL) for cross-modal retrieval.

Public names are imported lazily so that `import drcl_fast` stays cheap and a
user of one layer (say, only `evaluate_map`) does not pay for the others.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def _version() -> str:
    """pyproject.toml's version: the installed distribution's metadata, else the source tree's file."""
    from importlib import metadata
    try:
        return metadata.version("drcl_fast")
    except metadata.PackageNotFoundError:
        pass
    import re
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
    return found.group(1) if found else "unknown"


class _SourceTreeKernels(importlib.abc.MetaPathFinder):
    """Finds `drcl_fast.kernels` in the repository's top-level kernels/ folder, and nothing else.

    An installed package maps that folder in pyproject.toml; a source tree run
    (PYTHONPATH=.) has no such mapping, and widening the package's __path__ to the
    repository root would make tests/, bench/ and setup.py importable as drcl_fast.*.
    """

    def __init__(self, name: str, folder: Path) -> None:
        self.name, self.folder = name, folder

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.folder / "__init__.py",
                                                      submodule_search_locations=[str(self.folder)])


def _map_kernels_of_source_tree() -> None:
    name, folder = f"{__name__}.kernels", Path(__file__).resolve().parent.parent / "kernels"
    if not (folder / "__init__.py").is_file() or importlib.util.find_spec(name) is not None:
        return   # not a source tree, or the installed mapping already finds it
    if not any(isinstance(finder, _SourceTreeKernels) for finder in sys.meta_path):
        sys.meta_path.append(_SourceTreeKernels(name, folder))


_map_kernels_of_source_tree()

_PUBLIC = {
    "Solver": "drcl_fast.solver",
    "DRCLConfig": "drcl_fast.config",
    "DRCL": "drcl_fast.api",
    "evaluate_map": "drcl_fast.retrieval",
    "evaluate_directions": "drcl_fast.retrieval",
    "load_dataset": "drcl_fast.data",
    "load_model": "drcl_fast.serving",
    "TrainedModel": "drcl_fast.serving",
}

__all__ = sorted(_PUBLIC) + ["ops"]


def __getattr__(name: str):
    if name == "__version__":      # computed on use: importlib.metadata is not free to import
        return _version()
    if name == "ops":
        return importlib.import_module("drcl_fast.ops")
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'drcl_fast' has no attribute {name!r}")
