"""Backends by name: the built-in ones below, plus any that an installed distribution declares as a
Python entry point of group `leaneye.backends` (name = the backend's name in manifests, value =
`module:BackendSubclass`), so that e.g. leaneye_compress can add a PyTorch backend without leaneye
importing torch. Entry points are read when an engine asks for a backend, never at `import leaneye`;
a backend's module is imported only when an engine uses it.
"""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path

from ..errors import LeanEyeError, first_line
from .base import Backend, BackendOptions

ENTRY_POINT_GROUP = "leaneye.backends"
DEVICE_STAGES_GROUP = "leaneye.device_stages"
# Written as entry points are, so that built-in and plug-in backends load the same way.
BUILTIN_BACKENDS = {
    "onnxruntime": "leaneye.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "leaneye.backends.tensorrt.backend:TensorRTBackend",
}


def _describe(entry_point: metadata.EntryPoint) -> str:
    return f"entry point '{entry_point.name} = {entry_point.value}' (group {ENTRY_POINT_GROUP})"


# Once per process: scanning the installed distributions takes some 15 ms with a full environment.
@functools.cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Built-in backends and the installed distributions' entry points, by name."""
    found = {name: metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in BUILTIN_BACKENDS.items()}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        known = found.get(entry_point.name)
        if known is None:
            found[entry_point.name] = entry_point
        elif known.value != entry_point.value:  # the same distribution seen twice on sys.path is no conflict
            taken = "the built-in backend" if entry_point.name in BUILTIN_BACKENDS else _describe(known)
            raise LeanEyeError(f"{_describe(entry_point)}: the name {entry_point.name!r} is taken by {taken}")
    return found


@functools.cache
def device_stages_factory():
    """Pre/post-processing on the device for backends whose tensors are raw CUDA memory (TensorRT):
    the first loadable entry point of group `leaneye.device_stages` (name: the array library it uses;
    value: `module:function(manifest, settings, backend) -> DevicePipeline | None`), or None when none
    is installed or its library is missing (then the CPU stages run)."""
    for entry_point in sorted(metadata.entry_points(group=DEVICE_STAGES_GROUP), key=lambda point: point.name):
        try:
            return entry_point.load()
        except ImportError:  # leaneye_compress installed without torch, say
            continue
    return None


def backend_names() -> list[str]:
    """The backends a manifest may name here, sorted."""
    return sorted(_entry_points())


def backend_class(name: str) -> type[Backend]:
    entry_points = _entry_points()
    if name not in entry_points:
        raise LeanEyeError(f"backend {name!r}: expected one of {', '.join(sorted(entry_points))}")
    entry_point = entry_points[name]
    try:
        cls = entry_point.load()
    except Exception as exc:  # whatever the plugin's import raises
        raise LeanEyeError(f"{_describe(entry_point)}: cannot be loaded: {first_line(exc)}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise LeanEyeError(f"{_describe(entry_point)}: expected a subclass of leaneye.backends.Backend, got {cls!r}")
    if getattr(cls, "name", None) != name:
        raise LeanEyeError(
            f"{_describe(entry_point)}: the class's name attribute is {getattr(cls, 'name', None)!r}, expected {name!r}"
        )
    return cls


def load_backend(
    name: str,
    model_path: Path | str,
    input_name: str,
    input_shape: tuple[int, ...],
    options: BackendOptions | None = None,
    target=None,
) -> Backend:
    """Configure backend `name` for the model file (nothing allocated until `activate()`); `target`
    is the manifest's target block (`leaneye.engine.target.Target`) or None."""
    return backend_class(name)(model_path, input_name, input_shape, options, target)
