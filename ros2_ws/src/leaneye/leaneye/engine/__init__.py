"""Engine directories: a model file plus `manifest.json` (format: `leaneye.engine.manifest`)."""

from .manifest import (
    ALIGNS,
    COLORS,
    FORMAT_VERSION,
    INPUT_DTYPES,
    MANIFEST_NAME,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    PRECISIONS,
    InputSpec,
    Manifest,
    file_sha256,
    load_manifest,
    model_file,
    parse_manifest,
    tool_versions,
    write_engine,
)
from .target import Target

__all__ = [
    "ALIGNS",
    "COLORS",
    "FORMAT_VERSION",
    "INPUT_DTYPES",
    "InputSpec",
    "MANIFEST_NAME",
    "MAX_INPUT_PIXELS",
    "MAX_INPUT_SIDE",
    "Manifest",
    "PRECISIONS",
    "Target",
    "file_sha256",
    "load_manifest",
    "model_file",
    "parse_manifest",
    "tool_versions",
    "write_engine",
]
