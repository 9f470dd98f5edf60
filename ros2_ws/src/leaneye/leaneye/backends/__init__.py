"""Inference backends behind one interface (`base.Backend`), chosen by an engine manifest's "backend"
field and found through the registry (built in, or Python entry points of group `leaneye.backends`);
backend libraries are imported only when an engine asks."""

from .base import Backend, BackendOptions, format_extra_options, parse_extra_options
from .registry import ENTRY_POINT_GROUP, backend_class, backend_names, load_backend

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendOptions",
    "backend_class",
    "backend_names",
    "format_extra_options",
    "load_backend",
    "parse_extra_options",
]
