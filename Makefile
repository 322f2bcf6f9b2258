# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; a bare `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: demo test install clean

install: $(STAMP)

# setup.py compiles csrc/ (the C++ MAP ranking, and the CPU training step against the torch
# just installed, hence no build isolation; numpy first, which torch's import looks for) into
# the package: rebuild when it changes. The metadata and package data are declared as current
# setuptools wants them (no warnings); the one notice every editable install of this layout prints
# ("Editable installation": kernels/ is mapped to drcl_fast.kernels) is information, filtered out.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)" numpy "setuptools>=77" "pybind11>=2.10"
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet --no-build-isolation -e ".[test]"
	touch $@

# Six-view DRCL on the bundled UCI mfeat digits (CPU preset), then the 30-direction MAP table.
demo: $(STAMP)
	$(BIN)/drcl-fast train --datasets mfeat --out $(DEMO_OUT) --overwrite

# In the test run (and CI) a C++ extension that did not build, or a missing Triton, is a
# failure, not a reason to skip their tests; `make demo` keeps the fallback.
test: export DRCL_FAST_REQUIRE_EXTENSIONS := 1
test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs build *.egg-info
