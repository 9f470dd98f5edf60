"""The backend interface. Loading a model is separate from allocating it, as in Polygraphy's
`BaseRunner`, and maps onto the ROS 2 lifecycle: configure = construct (`load_backend`), activate =
`activate()` (sessions, device buffers), deactivate = `deactivate()` (frees them; `activate()` may
follow again). The base class owns that life cycle; a backend implements the `_activate`,
`_infer` and `_deactivate` hooks, and may check options, target and libraries in `_load`.
How to add one: docs/backends.md.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from ..errors import LeanEyeError

MAX_THREADS = 1024


@dataclass(frozen=True)
class BackendOptions:
    """What the caller asks of a backend: `threads` 0 means the library's own default; `device` names
    where to run ("cpu", "cuda:0", ...; None: the backend's first device); `extra` holds
    backend-specific settings by name. A backend refuses the options it does not honour
    (`Backend.devices`, `honours_threads`, `extra_options`)."""

    threads: int = 0
    device: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        threads = self.threads
        if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= MAX_THREADS:
            raise LeanEyeError(f"threads: expected 0 (the backend's default) to {MAX_THREADS}, got {threads}")
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise LeanEyeError(f"device: expected a device name such as 'cpu' or 'cuda:0', got {self.device!r}")
        if not isinstance(self.extra, dict) or not all(isinstance(key, str) for key in self.extra):
            raise LeanEyeError(f"extra: expected a mapping of option names to values, got {self.extra!r}")


class DevicePipeline(Protocol):
    """A frame's three stages on a backend's device (a GPU), for backends that offer them
    (`Backend.device_pipeline`): arrays stay on the device from the uploaded frame to the kept boxes.
    Each stage may return before its work is done; `synchronize` waits for it."""

    def preprocess(self, frame: np.ndarray) -> tuple[object, object]:
        """Upload, letterbox and normalise a BGR uint8 frame: (input tensor on the device, LetterboxTransform)."""

    def infer(self, tensor) -> list:
        """The network's outputs, on the device."""

    def postprocess(self, outputs: list, transform, image_size: tuple[int, int]) -> tuple:
        """Decode + NMS on the device: (boxes, scores, class_ids) as host NumPy arrays in frame pixels."""

    def synchronize(self) -> None: ...

    def to_host(self, outputs: list) -> list[np.ndarray]:
        """Outputs as host float32 arrays, for the CPU postprocessor."""


def parse_extra_options(items, where: str) -> dict:
    """`KEY=VALUE` strings (a CLI's repeated `--backend-option`, the node's `backend_options`) as
    `BackendOptions.extra`: true/false become booleans, integers ints, anything else stays a string."""
    extra = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key.isidentifier():
            raise LeanEyeError(f"{where}: expected KEY=VALUE such as cuda_graph=true, got {item!r}")
        if key in extra:
            raise LeanEyeError(f"{where}: {key} given twice")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            extra[key] = lowered == "true"
        elif re.fullmatch(r"[+-]?\d+", text.strip()):
            extra[key] = int(text)
        else:
            extra[key] = text
    return extra


def format_extra_options(extra: dict) -> list[str]:
    """The inverse of `parse_extra_options`, for handing options on as a node parameter."""
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in extra.items()]


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading dotted numbers of a version ("1.17.0+cu118" -> (1, 17, 0)), for minimum checks."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


class Backend(abc.ABC):
    """A configured model: `infer` runs one input tensor (shape `input_shape`) and returns the outputs
    in the model's order as host NumPy arrays, finished (a GPU backend synchronises inside `_infer`,
    so that the caller's timing of `infer` is the whole inference)."""

    name: ClassVar[str]  # the registry's name for it, as in manifests; also labels its inference call
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # the first is the default
    honours_threads: ClassVar[bool] = False
    extra_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        model_path: Path | str,
        input_name: str,
        input_shape: tuple[int, ...],
        options: BackendOptions | None = None,
        target=None,
    ):
        """Configure (nothing allocated): `target` is the manifest's `leaneye.engine.target.Target`
        or None; options and target this backend cannot honour fail here, as one-line errors."""
        self.model_path = Path(model_path)
        self.input_name = input_name
        self.input_shape = tuple(input_shape)
        self.options = options if options is not None else BackendOptions()
        self.device = self.options.device or self.devices[0]
        self._check_options()
        self._load(target)
        self._active = False

    def _check_options(self) -> None:
        options, where = self.options, f"backend {self.name!r}"
        if self.device not in self.devices:
            raise LeanEyeError(
                f"{where}: option device={self.device!r} is not supported; it runs on {', '.join(self.devices)}"
            )
        if options.threads and not self.honours_threads:
            raise LeanEyeError(
                f"{where}: option threads={options.threads} is not supported; it chooses its own threads (use 0)"
            )
        unknown = sorted(set(options.extra) - self.extra_options)
        if unknown:
            takes = ", ".join(sorted(self.extra_options)) or "none"
            raise LeanEyeError(f"{where}: unknown extra option {unknown[0]!r}; its extra options: {takes}")

    def _load(self, target) -> None:
        """Check at configure time what can be checked without allocating: the library is there, the
        manifest's target (None, or what the engine was built for) is what this machine has. This
        default refuses any target field: a backend that checks none cannot vouch for one."""
        named = target.to_dict() if target is not None else {}
        if named:
            key, value = next(iter(named.items()))
            raise LeanEyeError(
                f"{self.model_path}: manifest field 'target.{key}' is {value!r}, but backend {self.name!r} "
                f"checks no target"
            )

    def device_pipeline(self, manifest, settings) -> DevicePipeline | None:
        """Pre- and post-processing on this backend's device for `manifest` at `settings`
        (`leaneye.vision.postprocess.DetectionSettings`), or None (this default): the Detector then
        runs its CPU stages around `infer`."""
        return None

    @property
    def active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Allocate what inference needs; errors about the model file surface here at the latest.
        Activating an active backend does nothing (a ROS node may re-enter its active state)."""
        if self._active:
            return
        self._activate()
        self._active = True

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the network on `tensor`; only between `activate()` and `deactivate()`."""
        if not self._active:
            raise RuntimeError(f"backend {self.name!r} ({self.model_path}): infer() before activate()")
        return self._infer(tensor)

    def deactivate(self) -> None:
        """Free what `activate` allocated; a backend already inactive stays so."""
        if not self._active:
            return
        try:
            self._deactivate()
        finally:
            self._active = False

    @abc.abstractmethod
    def _activate(self) -> None:
        """Allocate; either completes or raises with nothing left allocated."""

    @abc.abstractmethod
    def _infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """The outputs as host NumPy arrays, computation finished."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Free what `_activate` allocated."""
