"""The repository's shape: the vehicle side stays free of PyTorch, the offline side and (outside
leaneye/ros/) rclpy, its core never imports its CLI, and its ROS 2 package metadata is what colcon needs.
These run in both test environments."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime_core

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "ros2_ws" / "src" / "leaneye"
# ros2_ws/src, not ros2_ws: colcon's build/ install/ log/ beside it hold copies.
SOURCE_DIRS = [REPO_ROOT / "ros2_ws" / "src", REPO_ROOT / "compression", REPO_ROOT / "tests"]
# Heavy or offline-only modules: the vehicle must reach `leaneye --help` without any of them.
# onnxruntime and rosbags are optional extras of `leaneye`, so they too may only load lazily.
FORBIDDEN_AT_IMPORT = ("torch", "rclpy", "leaneye_compress", "onnxruntime", "rosbags")


def python_files(*roots: Path) -> list[Path]:
    # An in-tree `pip install` (not editable) leaves build/lib copies, possibly stale.
    return sorted(path for root in roots for path in root.rglob("*.py") if "build" not in path.relative_to(root).parts)


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level module names that `path` imports absolutely (relative imports stay in-package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def setup_py_call_keywords() -> dict[str, ast.expr]:
    tree = ast.parse((PACKAGE_DIR / "setup.py").read_text(encoding="utf-8"))
    calls = [
        node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    ]
    assert len(calls) == 1, "setup.py: expected exactly one setup(...) call"
    return {keyword.arg: keyword.value for keyword in calls[0].keywords}


def imported_modules(path: Path, package_root: Path) -> set[str]:
    """Absolute names of the modules `path` imports, relative imports resolved against its package."""
    package = list(
        path.relative_to(package_root.parent).parts[:-1]
    )  # leaneye/cli/x.py and its __init__.py: leaneye.cli
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import cli`
    return names


def vehicle_modules() -> dict[str, set[str]]:
    root = PACKAGE_DIR / "leaneye"
    return {str(path.relative_to(root)): imported_modules(path, root) for path in python_files(root)}


def test_leaneye_help_loads_no_heavy_module():
    # A fresh interpreter, so that modules other tests imported do not count; every subcommand's --help too.
    probe = (
        "import sys, leaneye.cli as cli\n"
        "commands = [[]] + [[name] for name in cli.build_parser()._subparsers._group_actions[0].choices]\n"
        "for argv in commands:\n"
        "    try:\n"
        "        cli.main([*argv, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print('loaded:', ','.join(name for name in {FORBIDDEN_AT_IMPORT!r} if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: leaneye replay" in result.stdout  # the subcommands' help did run
    assert result.stdout.splitlines()[-1] == "loaded: ", f"`leaneye --help` imported {result.stdout.splitlines()[-1]}"


def test_vehicle_side_never_imports_torch_or_the_offline_side():
    offenders = {
        path: sorted(name for name in names if name.split(".")[0] in ("torch", "leaneye_compress"))
        for path, names in vehicle_modules().items()
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_leaneye_ros_imports_rclpy():
    offenders = {
        path: sorted(name for name in names if name.split(".")[0] == "rclpy")
        for path, names in vehicle_modules().items()
        if not path.startswith("ros/")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_nothing_in_the_core_imports_the_cli():
    offenders = {
        path: sorted(name for name in names if name == "leaneye.cli" or name.startswith("leaneye.cli."))
        for path, names in vehicle_modules().items()
        if not path.startswith("cli/")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_import_checks_resolve_relative_imports():
    """The checks above would pass vacuously if relative imports were misread."""
    modules = vehicle_modules()
    assert "leaneye.errors" in modules["cli/__init__.py"] and "leaneye.cli.options" in modules["cli/detect.py"]
    assert "leaneye.image_io" in modules["eval/datasets.py"]


def test_nothing_imports_the_compression_folder_as_a_package():
    # compression/ is a source folder; its package is leaneye_compress.
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in python_files(*SOURCE_DIRS)
        if "compression" in imported_top_level_names(path)
    ]
    assert offenders == []


def test_no_package_named_perception():
    found = [
        str(path.relative_to(REPO_ROOT)) for root in SOURCE_DIRS for path in root.rglob("perception") if path.is_dir()
    ]
    assert found == []


def test_package_xml_is_format_3_ament_python_matching_setup_py():
    import leaneye

    package = ET.parse(PACKAGE_DIR / "package.xml").getroot()
    assert package.tag == "package" and package.get("format") == "3"
    assert package.findtext("name") == "leaneye"
    assert package.findtext("export/build_type") == "ament_python"
    keywords = setup_py_call_keywords()
    assert ast.literal_eval(keywords["name"]) == "leaneye"
    assert ast.literal_eval(keywords["version"]) == package.findtext("version") == leaneye.__version__
    # colcon registers the package in the ament index through this marker file.
    assert (PACKAGE_DIR / "resource" / "leaneye").is_file()


def test_console_script_is_declared_and_installed():
    entry_points = ast.literal_eval(setup_py_call_keywords()["entry_points"])
    assert "leaneye = leaneye.cli:main" in entry_points["console_scripts"]
    script = Path(sys.executable).parent / "leaneye"
    assert script.is_file(), f"{script}: pip did not install the console script"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: leaneye")


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="not a git checkout")
def test_built_engines_are_ignored_but_their_readme_is_not():
    def ignored(relative: str) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", "--no-index", relative], cwd=REPO_ROOT, check=False)
        return check.returncode == 0

    assert ignored("engines/yolox_nano_int8/model.engine")
    assert not ignored("engines/README.md")
