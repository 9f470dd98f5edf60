"""The backend interface: loading an engine is separate from allocating it, as in Polygraphy's
backend layer, and maps onto the ROS 2 lifecycle: configure = `load()`, activate = `activate()`
(sessions, device buffers), deactivate = `deactivate()` (frees them; `activate()` may follow again).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from ..errors import LeanEyeError

MAX_THREADS = 1024


@dataclass(frozen=True)
class BackendOptions:
    """Knobs a backend may honour; 0 threads means the library's own default."""

    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0

    def __post_init__(self) -> None:
        for value in (self.intra_op_num_threads, self.inter_op_num_threads):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_THREADS:
                raise LeanEyeError(f"threads: expected 0 (the backend's default) to {MAX_THREADS}, got {value}")


class Backend(abc.ABC):
    """A loaded model: `infer` runs one input tensor and returns the outputs in the model's order."""

    input_name: str
    input_shape: tuple[int, ...]

    @abc.abstractmethod
    def activate(self) -> None:
        """Allocate what inference needs; errors about the model file surface here at the latest."""

    @abc.abstractmethod
    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the network on `tensor` (shape `input_shape`); only valid between activate and deactivate."""

    @abc.abstractmethod
    def deactivate(self) -> None:
        """Free what `activate` allocated."""

    @property
    @abc.abstractmethod
    def active(self) -> bool: ...
