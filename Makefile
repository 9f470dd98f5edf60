# Two commands a newcomer needs: `make demo` and `make test`. Each creates .venv if missing and
# installs the pinned dependencies (constraints.txt) itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# --use-pep517: an older pip (Python 3.10's 23.0) would otherwise fall back to `setup.py develop`,
# which honours ros2_ws/src/leaneye/setup.cfg's colcon script_dir and hides `leaneye` from bin/.
PIP_INSTALL := -m pip install --disable-pip-version-check -q --use-pep517
PIP := $(PY) $(PIP_INSTALL) -c constraints.txt
STAMP := $(VENV)/.installed

# The second environment proves the vehicle side and the torch-free offline commands on Humble's
# stack: Python 3.10 (pyenv's if pyenv has one), NumPy 1.26, no torch; leaneye_compress without its
# `train` extra. Without a Python 3.10 it falls back to $(PYTHON), which still proves NumPy 1 and no torch.
VENV1 := .venv-numpy1
PY1 := $(VENV1)/bin/python
STAMP1 := $(VENV1)/.installed
ifndef PYTHON_NUMPY1
PYTHON_NUMPY1 := $(or $(shell PYENV_VERSION=3.10 python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null),$(PYTHON))
endif

# pipefail, so that filtering pip's output below cannot hide pip's own exit status.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# A pip configured with local indexes that lack most packages (as on the project's build machines)
# prints "Location ... is ignored" once per package and index. Only those lines are dropped.
PIP_FILTER := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test test-all test-numpy1 lint lint-py310 train-default venv clean

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml ros2_ws/src/leaneye/setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned dependencies into $(VENV) (first run takes about a minute)..."
	$(PIP) torch==2.13.0 $(PIP_FILTER)
	$(PIP) -e "ros2_ws/src/leaneye[bags,onnxruntime,eval]" -e ".[train]" pytest vermin ruff $(PIP_FILTER)
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m leaneye_compress.demo

# `make test`: everything but the tests marked slow (training, the demo, ONNX export, real-data runs;
# a few minutes). `make test-all`, which CI runs (.ci/run), includes them. (test-numpy1 runs all of
# the runtime core either way: its slow tests take seconds.)
PYTEST_SELECT ?= -m "not slow"

test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_SELECT) tests
	$(MAKE) --no-print-directory lint-py310
	$(MAKE) --no-print-directory test-numpy1

test-all: $(STAMP)
	$(MAKE) --no-print-directory test PYTEST_SELECT=

# ruff lints and checks formatting of both halves and the tests (configuration in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Both halves must run on Humble's Python 3.10 (the offline half on a Jetson): no syntax or stdlib newer.
lint-py310: $(STAMP)
	$(VENV)/bin/vermin --no-tips --violations -t=3.10- --eval-annotations ros2_ws/src/leaneye/leaneye compression/leaneye_compress

# constraints.txt is the one pin file: its `# numpy1: NAME==VERSION` lines replace NAME's pin here.
$(STAMP1): constraints.txt pyproject.toml ros2_ws/src/leaneye/setup.py
	@test -x $(PY1) || $(PYTHON_NUMPY1) -m venv $(VENV1)
	awk 'NR == FNR { if (sub(/^# numpy1: /, "")) { split($$0, pin, "=="); override[tolower(pin[1])] = $$0 } next } \
	     /^[A-Za-z0-9]/ { split($$0, pin, "=="); if (tolower(pin[1]) in override) next } \
	     { print } END { for (name in override) print override[name] }' constraints.txt constraints.txt > $(VENV1)/constraints.txt
	@echo "Installing the runtime core and torch-free offline half into $(VENV1) ($$($(PY1) --version), under a minute)..."
	$(PY1) $(PIP_INSTALL) -c $(VENV1)/constraints.txt -e "ros2_ws/src/leaneye[bags,onnxruntime,eval]" -e . pytest $(PIP_FILTER)
	@touch $(STAMP1)

# The runtime_core and torch_free tests; pytest's exit 5 ("no tests collected") is not a failure
# here, since the selection may be empty while the runtime core is young.
test-numpy1: $(STAMP1)
	@$(PY1) -c 'import importlib.util as u, sys, numpy; \
	    sys.exit("$(VENV1) must not have torch") if u.find_spec("torch") else None; \
	    sys.exit("$(VENV1) lacks leaneye_compress") if not u.find_spec("leaneye_compress") else None; \
	    print(f"Runtime core and torch-free offline half on Python {sys.version.split()[0]}, NumPy {numpy.__version__}, without torch:")'
	$(PY1) -m pytest -q -m "runtime_core or torch_free" tests || test $$? -eq 5

train-default: $(STAMP)
	$(VENV)/bin/leaneye-compress train --config compression/configs/teacher.yaml --out compression/leaneye_compress/default_model \
	    --work-dir runs/train/teacher --cache-dir runs/cache --force

clean:
	rm -rf $(VENV) $(VENV1) runs
