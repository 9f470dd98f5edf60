"""Inference backends, chosen by an engine manifest's "backend" field.

Each backend module defines `load(engine_dir, manifest, options) -> Backend` (see base.py). They
are imported only when an engine asks for them, so `import leaneye` needs none of their libraries.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .base import Backend, BackendOptions

# name -> module; modules are imported lazily by load_backend.
BACKENDS = {
    "onnxruntime": "leaneye.backends.onnxruntime",
}


def load_backend(engine_dir: Path | str, manifest, options: BackendOptions | None = None) -> Backend:
    """Configure the manifest's backend for `engine_dir` (nothing allocated until `activate()`)."""
    module = importlib.import_module(BACKENDS[manifest.backend])
    return module.load(Path(engine_dir), manifest, options or BackendOptions())
