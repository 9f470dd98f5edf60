"""Shared test helpers: where the project's shared real-data fixtures live, and which test modules
an environment without PyTorch can collect."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real external data kept beside the repository, never inside it; a user's fresh clone lacks it.
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"

# `make test-numpy1` runs `-m "runtime_core or torch_free"` where torch is absent (leaneye_compress
# is installed without its `train` extra). Modules that mention neither marker may import torch at
# their top, so importing them there would fail before `-m` could deselect them: they are not
# collected at all.
WITHOUT_TORCH = importlib.util.find_spec("torch") is None
TORCH_FREE_MARKERS = ("runtime_core", "torch_free")


def shared_fixtures_dir() -> Path:
    """../shared/fixtures, or skip the calling test when this checkout has none beside it."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(
            f"../shared/fixtures absent: this test needs the project's shared real-data fixtures (looked in {SHARED_FIXTURES})"
        )
    return SHARED_FIXTURES


@pytest.fixture
def shared_fixtures() -> Path:
    return shared_fixtures_dir()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on a machine shared with other jobs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def yolox_engine(tmp_path, shared_fixtures) -> Path:
    """The YOLOX-Nano fixture imported by `leaneye-compress import` into an engine directory."""
    from leaneye_compress.cli import main as compress_main

    yolox, engine = shared_fixtures / "yolox_nano", tmp_path / "yolox_nano"
    command = ["import", str(yolox / "yolox_nano.onnx"), "--decoder", "yolox", "--out", str(engine)]
    assert compress_main([*command, "--classes", str(yolox / "coco_classes.txt")]) == 0
    return engine


# The ROS 2 tests (run in .venv-ros, which has no torch) drive the vehicle side alone: never torch.
ROS_TESTS = REPO_ROOT / "tests" / "ros"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if ROS_TESTS in collection_path.parents:
        return None
    if WITHOUT_TORCH and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        text = collection_path.read_text(encoding="utf-8")
        if not any(marker in text for marker in TORCH_FREE_MARKERS):
            return True
    return None
