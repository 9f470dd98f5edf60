"""The repository's shape: the vehicle side stays free of PyTorch and of the offline side, and its
ROS 2 package metadata is what colcon needs. These run in both test environments."""

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


def test_cli_loads_without_heavy_modules():
    # A fresh interpreter, so that modules other tests imported do not count.
    probe = (
        "import sys, leaneye, leaneye.cli; leaneye.cli.build_parser(); "
        f"print(','.join(name for name in {FORBIDDEN_AT_IMPORT!r} if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"loading the leaneye CLI imported: {result.stdout.strip()}"


def test_vehicle_side_never_imports_torch_or_the_offline_side():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_top_level_names(path) & {"torch", "leaneye_compress"})
        for path in python_files(PACKAGE_DIR / "leaneye")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


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
