"""Inference backends behind one interface (`base.Backend`), chosen by an engine manifest's "backend"
field and found through the registry; backend libraries are imported only when an engine asks."""

from .base import Backend, BackendOptions
from .registry import BACKENDS, load_backend

__all__ = ["BACKENDS", "Backend", "BackendOptions", "load_backend"]
