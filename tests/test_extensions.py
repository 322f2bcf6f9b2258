"""`make test` and CI fail, instead of skipping, when the C++ extension or Triton is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SWITCH = "DRCL_FAST_REQUIRE_EXTENSIONS"


def run_suite_without_the_extension(require: bool) -> subprocess.CompletedProcess:
    """A short pytest run in a process where `import drcl_fast.retrieval._map_cpp` fails, as after a failed build."""
    script = ("import sys; sys.modules['drcl_fast.retrieval._map_cpp'] = None; import pytest; "
              "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/training/test_model.py']))")
    env = {k: v for k, v in os.environ.items() if k != SWITCH} | ({SWITCH: "1"} if require else {})
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_switch_turns_a_missing_extension_into_a_failing_run():
    required = run_suite_without_the_extension(require=True)
    assert required.returncode != 0
    assert "drcl_fast.retrieval._map_cpp is not built" in required.stdout + required.stderr
    assert run_suite_without_the_extension(require=False).returncode == 0   # users keep the fallback


def test_makefile_and_ci_set_the_switch():
    makefile = (ROOT / "Makefile").read_text()
    assert f"test: export {SWITCH} := 1" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def build_broken_extension(tmp_path: Path, require: bool) -> tuple[subprocess.CompletedProcess, Path]:
    """`setup.py build_ext --inplace` in a copy of the build files whose C++ source does not compile."""
    pytest.importorskip("pybind11", reason="pybind11 (a test dependency) builds the extension")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "csrc", tree / "csrc")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    (tree / "csrc" / "map_rank.cpp").write_text("#error deliberately broken\n")
    # An earlier build's, where the build writes this one.
    stale = tree / "drcl_fast" / "retrieval" / f"_map_cpp{sysconfig.get_config_var('EXT_SUFFIX')}"
    stale.parent.mkdir(parents=True)
    (tree / "drcl_fast" / "training").mkdir()   # where the training step's extension lands
    stale.write_bytes(b"")
    os.utime(stale, (0, 0))                     # older than the source, so the build runs
    env = {k: v for k, v in os.environ.items() if k != SWITCH} | ({SWITCH: "1"} if require else {})
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, tree


def test_a_broken_build_fails_under_the_switch_and_warns_without(tmp_path):
    required, tree = build_broken_extension(tmp_path / "required", require=True)
    assert required.returncode != 0 and "deliberately broken" in required.stderr
    optional, tree = build_broken_extension(tmp_path / "optional", require=False)
    assert optional.returncode == 0
    assert "drcl_fast.retrieval._map_cpp was not built" in optional.stderr
    assert not list((tree / "drcl_fast" / "retrieval").glob("_map_cpp*")), \
        "a stale build would be imported as this one"
