"""The ROS 2 tests: real rclpy, real Fast DDS, the real message types, in .venv-ros (`make test-ros`,
which builds it from ../shared/fixtures/ros2_jazzy_src and sources its setup.bash).

Elsewhere (the main and NumPy 1 environments have no rclpy) these modules are not collected: they
run in `make test-ros`, which says so when ../shared is absent.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Discovery stays on loopback (multicast on every interface is not allowed on these machines), and
# a domain of this run's own keeps parallel runs apart. Set before rclpy is first initialised.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))

HAVE_ROS = importlib.util.find_spec("rclpy") is not None
REPO = Path(__file__).resolve().parents[2]
MAIN_VENV_PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_CHECKPOINT = REPO / "compression" / "leaneye_compress" / "default_model" / "model.pt"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not HAVE_ROS and collection_path.suffix == ".py":
        return True
    return None


class Graph:
    """One rclpy context for one test: nodes made here spin in one executor, on a thread of the test's."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.nodes: list = []

    def node(self, name: str, **kwargs):
        import rclpy

        node = rclpy.create_node(name, context=self.context, **kwargs)
        return self.add(node)

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def spin_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Spin until `condition()` holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return condition()

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def close(self) -> None:
        import rclpy

        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def graph() -> Iterator[Graph]:
    g = Graph()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="session")
def scene_engine(tmp_path_factory) -> Path:
    """The project's default model (LeanDet, trained on the procedural scenes) as an ONNX Runtime
    engine, exported by the main environment's `leaneye-compress export` (this one has no PyTorch)."""
    if not MAIN_VENV_PYTHON.exists():
        pytest.skip(f"{MAIN_VENV_PYTHON} absent: `make venv` exports the default model (PyTorch lives there)")
    out = tmp_path_factory.mktemp("scene_engine") / "engine"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "_ROS_WHEELS", "LD_LIBRARY"))}
    subprocess.run(
        [str(MAIN_VENV_PYTHON), "-m", "leaneye_compress.cli", "export", str(DEFAULT_CHECKPOINT), "--out", str(out)],
        check=True,
        env=env,
        cwd=REPO,
        capture_output=True,
    )
    return out


def ros_env(**extra: str) -> dict[str, str]:
    """The environment for a ROS 2 subprocess: this one (sourced setup.bash), loopback discovery."""
    return {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1", **extra}
