"""Build the ROS 2 Jazzy test environment (.venv-ros) from PyPI wheels and the shared fixture sources.

Run by `make venv-ros` as `<venv>/bin/python tests/ros/make_env.py constraints.txt`, once the pinned
wheels (`ros-jazzy-*`, colcon) are installed in the venv. What this adds:

1. The wheels' exported CMake targets name the paths of the container that built them
   (/opt/python/cpXY-cpXY/include/pythonX.Y and NumPy's include folder): rewritten to this
   interpreter's, or CMake refuses to configure any message package.
2. The pure-Python ROS packages of ../shared/fixtures/ros2_jazzy_src (launch, launch_ros, ros2cli,
   ...), pip-installed without dependencies from a fresh copy (setuptools writes build/ into the
   source tree, and the fixtures are read-only).
3. `colcon build --merge-install --symlink-install` into the venv itself: the fixture's message
   packages (vision_msgs, composition_interfaces) and our workspace (leaneye_msgs, leaneye), so
   the workspace is built exactly as a vehicle builds it, and sourcing <venv>/setup.bash gives
   `ros2 run leaneye ...`, `ros2 launch leaneye ...` and launch's Node(package="leaneye").
4. leaneye's declared Python dependencies (colcon installs none; rosdep does that on a vehicle).

The fixture sources are never copied into the project: the copy lives inside the venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURE_SRC = REPO.parent / "shared" / "fixtures" / "ros2_jazzy_src"
PURE_PYTHON = (
    "launch",
    "launch_xml",
    "launch_yaml",
    "launch_ros",
    "rosidl_runtime_py",
    "ros2cli",
    "ros2pkg",
    "ros2run",
    "ros2launch",
)
MESSAGE_PACKAGES = ("composition_interfaces", "vision_msgs")
EXTRAS = ("bags", "onnxruntime", "eval")  # leaneye's extras that the ROS tests need

_BUILD_CONTAINER_PATH = re.compile(
    r"/opt/python/cp\d+-cp\d+/(?:(include/python\d+\.\d+)|lib/python\d+\.\d+/site-packages/numpy/_core/include)"
)


def rewrite_cmake_exports(prefix: Path) -> int:
    import numpy

    include, numpy_include = sysconfig.get_paths()["include"], numpy.get_include()
    rewritten = 0
    for path in sorted((prefix / "share").glob("*/cmake/*.cmake")):
        text = path.read_text(encoding="utf-8")
        if "/opt/python/" not in text:
            continue
        text = _BUILD_CONTAINER_PATH.sub(lambda m: include if m.group(1) else numpy_include, text)
        if "/opt/python/" in text:
            sys.exit(f"{path}: a build-container path this script does not know how to rewrite")
        path.write_text(text, encoding="utf-8")
        rewritten += 1
    return rewritten


def run(*command: str | Path, **kwargs) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(part) for part in command], check=True, **kwargs)


def main() -> None:
    constraints = sys.argv[1]
    prefix = Path(sys.prefix)
    if not FIXTURE_SRC.is_dir():
        sys.exit(f"{FIXTURE_SRC}: not found; the ROS 2 test environment is built from the shared fixture sources")
    work = prefix / "colcon"
    sources = work / "fixture_src"
    shutil.rmtree(sources, ignore_errors=True)  # a fresh copy; colcon's build folders are reused
    shutil.copytree(FIXTURE_SRC, sources)
    for path in [sources, *sources.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)

    print(f"rewrote build-container paths in {rewrite_cmake_exports(prefix)} CMake export files")
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--disable-pip-version-check",
        *(sources / name for name in PURE_PYTHON),
    )

    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    # colcon writes its logs under --log-base; keep them (and build/) inside the venv, not the repo.
    run(
        prefix / "bin" / "colcon",
        "--log-base",
        work / "log",
        "build",
        "--merge-install",
        "--symlink-install",
        "--install-base",
        prefix,
        "--build-base",
        work / "build",
        "--base-paths",
        *(sources / name for name in MESSAGE_PACKAGES),
        REPO / "ros2_ws" / "src",
        "--event-handlers",
        "console_cohesion-",
        "summary+",
        "--cmake-args",
        "-DBUILD_TESTING=OFF",
        f"-DPython3_EXECUTABLE={sys.executable}",
        env=env,
    )
    install_declared_dependencies(work / "build" / "leaneye" / "leaneye.egg-info" / "requires.txt", constraints)


def install_declared_dependencies(requires_txt: Path, constraints: str) -> None:
    """pip-install what leaneye's setup.py declares (with the extras the tests use): colcon builds
    packages but installs no Python dependencies, which rosdep does on a vehicle."""
    requirements, section = [], ""
    for line in requires_txt.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line.strip() and section in ("", *EXTRAS):
            requirements.append(line.strip())
    run(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", constraints, *requirements)


if __name__ == "__main__":
    main()
