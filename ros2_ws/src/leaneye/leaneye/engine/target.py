"""A manifest's optional `target` block: what the engine was built for, which the backend compares
at load with what this machine and its libraries have (each backend decides which fields it can
check; the ONNX Runtime backend's rule is in `leaneye.engine.manifest`).

    "target": {
      "tensorrt_version": "10.3.0",      # the TensorRT that built a plan (plans run only on it)
      "compute_capability": "8.7",       # the GPU's, major.minor (Orin: 8.7)
      "device_name": "Orin",             # the GPU's name as its library reports it
      "onnxruntime_version": "1.17"      # the oldest onnxruntime that runs the model
    }

Every field is optional; a manifest without the block is valid (engines made before it existed).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .fields import Fields

VERSION = re.compile(r"\d+(\.\d+){0,3}")
COMPUTE_CAPABILITY = re.compile(r"\d+\.\d+")
# field -> (pattern or None for any non-empty string, what is expected)
TARGET_FIELDS = {
    "tensorrt_version": (VERSION, 'a version string such as "10.3.0"'),
    "compute_capability": (COMPUTE_CAPABILITY, 'major.minor as a string, such as "8.7"'),
    "device_name": (None, "the GPU's name, a non-empty string"),
    "onnxruntime_version": (VERSION, 'a version string such as "1.17"'),
}


@dataclass(frozen=True)
class Target:
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    device_name: str | None = None
    onnxruntime_version: str | None = None

    def to_dict(self) -> dict:
        """The JSON form: the fields that are set."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def parse_target(data: dict, fields: Fields) -> Target | None:
    """The manifest's `target` block, checked field by field; None when the manifest has none."""
    if "target" not in data:
        return None
    block = fields.obj(data, "target", f"an object with any of {', '.join(TARGET_FIELDS)}")
    values = {}
    for key, value in block.items():
        if key not in TARGET_FIELDS:
            raise fields.fail(f"target.{key}", f"only {', '.join(TARGET_FIELDS)} in 'target'", key)
        pattern, expected = TARGET_FIELDS[key]
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
            raise fields.fail(f"target.{key}", expected, value)
        values[key] = value
    return Target(**values)
