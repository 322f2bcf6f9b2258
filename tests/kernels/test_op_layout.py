"""Each fused training op is whole in its kernel file, and found whichever module a program imports first.

A kernel file holds the op's kernels, custom op and self-check probe; importing it registers both.
The kernels build on drcl_fast.ops, whose dispatch imports them, so each import order is tried in a
fresh process: a half-loaded module handed to dispatch would leave an op without its Triton entry.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO

TRAINING_OPS = {"gce_loss": "gce", "drcl_loss": "drcl_loss", "linear_relu": "linear_relu",
                "mixup_project": "mixup_project"}
CUSTOM_OPS = ["gce_forward", "drcl_loss_triton", "drcl_loss_restructured", "linear_relu", "linear_relu_backward",
              "mixup_project", "mixup_project_backward"]

REPORT = r"""
import json, sys
{block}
import importlib
importlib.import_module(sys.argv[1])
import torch
from drcl_fast import ops
from drcl_fast.runtime import selfcheck
print(json.dumps({{
    "triton": {{op: impls["triton"] is not None for op, impls in ops._REGISTRIES.items()}},
    "probes": {{op: probe.__module__ for op, probe in selfcheck._probes.items()}},
    "custom_ops": [name for name in {custom_ops!r} if hasattr(torch.ops.drcl_fast, name)],
}}))
"""


def report(first: str, without_triton: bool = False) -> dict:
    code = REPORT.format(block="sys.modules['triton'] = None" if without_triton else "", custom_ops=CUSTOM_OPS)
    done = subprocess.run([sys.executable, "-c", code, first], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("first", ["drcl_fast.kernels.drcl_loss", "drcl_fast.kernels.gce",
                                   "drcl_fast.kernels.linear_relu", "drcl_fast.kernels.mixup_project",
                                   "drcl_fast.kernels.precision", "drcl_fast.ops.restructured", "drcl_fast.ops"])
def test_every_op_has_its_triton_entry_probe_and_custom_op_whichever_module_loads_first(first: str) -> None:
    pytest.importorskip("triton")
    found = report(first)
    assert found["triton"] == dict.fromkeys(TRAINING_OPS, True)
    for op, module in TRAINING_OPS.items():   # the probe sits in the op's own kernel file
        assert found["probes"][op] == f"drcl_fast.kernels.{module}"
    assert found["custom_ops"] == CUSTOM_OPS


def test_without_triton_the_cpu_loss_and_its_custom_op_remain() -> None:
    found = report("drcl_fast.ops", without_triton=True)
    assert found["triton"] == dict.fromkeys(TRAINING_OPS, False)
    assert not set(TRAINING_OPS) & set(found["probes"])
    assert found["custom_ops"] == ["drcl_loss_restructured"]
