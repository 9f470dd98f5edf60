"""A manifest's optional `target` block: what the engine was built for, which the backend compares
at load with what this machine and its libraries have (each backend decides which fields it can
check; the ONNX Runtime backend's rule is in `leaneye.engine.manifest`).

    "target": {
      "tensorrt_version": "10.3.0",      # the TensorRT that built a plan (plans run only on it)
      "compute_capability": "8.7",       # the GPU's, major.minor (Orin: 8.7)
      "device_name": "Orin",             # the GPU's name as its library reports it
      "onnxruntime_version": "1.17",     # the oldest onnxruntime that runs the model
      "onnx_sha256": "<64 hex digits>",  # the ONNX a TensorRT plan was built from
      "tensorrt_build": {"precision": "fp16", "workspace_mb": 0, "dla_core": null, "batch": null,
                         "version_compatible": false},   # how the plan was (or is to be) built
      "tensorrt_io": [{"name": "images", "mode": "input", "dtype": "float", "shape": [1, 3, 416, 416]}, ...]
    }

The last three are written by the TensorRT builder (`leaneye.backends.tensorrt`); an engine that
carries an ONNX for TensorRT to build on the target says how in `tensorrt_build`.

Every field is optional; a manifest without the block is valid (engines made before it existed).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..backends.tensorrt.options import BuildOptions, TensorSpec
from .fields import Fields

VERSION = re.compile(r"\d+(\.\d+){0,3}")
COMPUTE_CAPABILITY = re.compile(r"\d+\.\d+")
SHA256 = re.compile(r"[0-9a-f]{64}")
# field -> (pattern or None for any non-empty string, what is expected)
TARGET_FIELDS = {
    "tensorrt_version": (VERSION, 'a version string such as "10.3.0"'),
    "compute_capability": (COMPUTE_CAPABILITY, 'major.minor as a string, such as "8.7"'),
    "device_name": (None, "the GPU's name, a non-empty string"),
    "onnxruntime_version": (VERSION, 'a version string such as "1.17"'),
    "onnx_sha256": (SHA256, "the ONNX's sha256, 64 lower-case hexadecimal digits"),
}
# Fields holding objects, each parsed by its own reader.
STRUCTURED_FIELDS = ("tensorrt_build", "tensorrt_io")


@dataclass(frozen=True)
class Target:
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    device_name: str | None = None
    onnxruntime_version: str | None = None
    onnx_sha256: str | None = None
    tensorrt_build: BuildOptions | None = None
    tensorrt_io: tuple[TensorSpec, ...] | None = None

    def to_dict(self) -> dict:
        """The JSON form: the fields that are set."""
        data = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if field.name == "tensorrt_build":
                value = value.to_dict()
            elif field.name == "tensorrt_io":
                value = [tensor.to_dict() for tensor in value]
            data[field.name] = value
        return data


def parse_target(data: dict, fields: Fields) -> Target | None:
    """The manifest's `target` block, checked field by field; None when the manifest has none."""
    if "target" not in data:
        return None
    names = ", ".join((*TARGET_FIELDS, *STRUCTURED_FIELDS))
    block = fields.obj(data, "target", f"an object with any of {names}")
    values = {}
    for key, value in block.items():
        if key == "tensorrt_build":
            values[key] = BuildOptions.from_mapping(value, fields.where, "target.tensorrt_build")
            continue
        if key == "tensorrt_io":
            if not isinstance(value, list) or not value:
                raise fields.fail("target.tensorrt_io", "a non-empty list of the plan's inputs and outputs", value)
            values[key] = tuple(
                TensorSpec.from_mapping(item, fields.where, f"target.tensorrt_io[{index}]")
                for index, item in enumerate(value)
            )
            continue
        if key not in TARGET_FIELDS:
            raise fields.fail(f"target.{key}", f"only {names} in 'target'", key)
        pattern, expected = TARGET_FIELDS[key]
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
            raise fields.fail(f"target.{key}", expected, value)
        values[key] = value
    return Target(**values)
