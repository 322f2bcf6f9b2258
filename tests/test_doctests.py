"""The examples in the user API's docstrings run and print what they show (doctest).

The user API (docs/design.md section 3): `DRCL` and its methods, `load_dataset`, `evaluate_map`,
`evaluate_directions` and the ops of `drcl_fast.ops.__all__`. Each one's docstring has an example
(DRCL's methods `encode`, `search` and `save` share the class's); MODULES are the modules those
docstrings are written in (`prior_pinv` in ops/pinv.py, `feature_mixup` in ops/reference.py), and
every module must hold examples, so that the check cannot pass vacuously.
"""
from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

from drcl_fast import DRCL, load_dataset, ops
from drcl_fast.retrieval import evaluate_directions, evaluate_map

MODULES = ["drcl_fast.api", "drcl_fast.data", "drcl_fast.ops", "drcl_fast.ops.pinv", "drcl_fast.ops.reference",
           "drcl_fast.retrieval"]
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

DOCUMENTED = {"DRCL": DRCL, "DRCL.fit": DRCL.fit, "DRCL.load": DRCL.load, "load_dataset": load_dataset,
              "evaluate_map": evaluate_map, "evaluate_directions": evaluate_directions,
              **{f"ops.{name}": getattr(ops, name) for name in ops.__all__}}
SHOWN_BY_THE_CLASS = ["encode", "search", "save", "load"]


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_print_what_they_show(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # whatever an example writes by mistake lands here, not in the tree
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS)
    assert result.attempted > 0, f"{name} holds no docstring examples"
    assert result.failed == 0, f"{result.failed} of {name}'s {result.attempted} examples failed (report above)"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_each_public_name_has_an_example_in_those_modules(name):
    obj = DOCUMENTED[name]
    assert ">>> " in (inspect.getdoc(obj) or ""), f"{name}'s docstring has no example"
    assert inspect.unwrap(obj).__module__ in MODULES, f"{name} is defined outside the modules the doctests run"


def test_the_class_example_calls_the_methods_without_their_own():
    examples = doctest.DocTestParser().get_examples(inspect.getdoc(DRCL))
    called = {method for method in SHOWN_BY_THE_CLASS if any(f".{method}(" in e.source for e in examples)}
    assert called == set(SHOWN_BY_THE_CLASS)
