"""Engine directories: a model file plus `manifest.json` (format: `leaneye.engine.manifest`)."""

from .manifest import (
    ALIGNS,
    COLORS,
    FORMAT_VERSION,
    INPUT_DTYPES,
    MANIFEST_NAME,
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

__all__ = [
    "ALIGNS",
    "COLORS",
    "FORMAT_VERSION",
    "INPUT_DTYPES",
    "InputSpec",
    "MANIFEST_NAME",
    "Manifest",
    "PRECISIONS",
    "file_sha256",
    "load_manifest",
    "model_file",
    "parse_manifest",
    "tool_versions",
    "write_engine",
]
