"""Build on target: an engine directory may carry an ONNX with `"backend": "tensorrt"` instead of a
plan (a plan only runs where it was built). The first load builds the plan for this TensorRT, GPU and
the manifest's `target.tensorrt_build` options and caches it beside the ONNX, keyed by all of them
(`platform.cache_key`); later loads reuse it. An entry is trusted only when its record names the same
key inputs and the plan's sha256 matches: a corrupt or foreign entry is rebuilt.

    engine/model.onnx, manifest.json
    engine/tensorrt_cache/<key>.plan     the plan
    engine/tensorrt_cache/<key>.json     what it was built from, its sha256 and its inputs/outputs
    engine/tensorrt_cache/timing-<platform>.cache   TensorRT's timing cache, reused by rebuilds

Where the engine directory is read-only, the cache goes to $XDG_CACHE_HOME/leaneye/tensorrt (else
~/.cache/leaneye/tensorrt) under the ONNX's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ...atomic import atomic_write_bytes, atomic_write_text
from .builder import build_plan
from .options import BuildOptions
from .platform import Platform, cache_key

CACHE_DIR_NAME = "tensorrt_cache"
LOG = logging.getLogger("leaneye.tensorrt")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_folder(onnx_path: Path, onnx_sha256: str) -> Path:
    beside = onnx_path.parent / CACHE_DIR_NAME
    probe = beside if beside.is_dir() else beside.parent
    if os.access(probe, os.W_OK):
        return beside
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "leaneye" / "tensorrt" / onnx_sha256[:24]


def entry_identity(onnx_sha256: str, platform: Platform, options: BuildOptions) -> dict:
    return {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": platform.tensorrt_version,
        "device_name": platform.device_name,
        "compute_capability": platform.compute_capability,
        "build": options.to_dict(),
    }


def valid_entry(plan_path: Path, record_path: Path, identity: dict) -> str | None:
    """Why the cache entry cannot be used (missing, foreign, corrupt), or None when it can."""
    if not plan_path.is_file() or not record_path.is_file():
        return "none cached"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "its record is unreadable"
    if not isinstance(record, dict) or record.get("identity") != identity:
        return "its record names another ONNX, TensorRT, GPU or options"
    if record.get("plan_sha256") != _sha256(plan_path.read_bytes()):
        return "the plan does not match its recorded sha256"
    return None


def cached_plan(trt, onnx_path: Path, options: BuildOptions, platform: Platform, rebuild: bool = False) -> Path:
    """The plan of `onnx_path` for this platform and options, built now unless a valid one is cached."""
    onnx = onnx_path.read_bytes()
    onnx_sha256 = _sha256(onnx)
    folder = cache_folder(onnx_path, onnx_sha256)
    key = cache_key(onnx_sha256, platform, options)
    plan_path, record_path = folder / f"{key}.plan", folder / f"{key}.json"
    identity = entry_identity(onnx_sha256, platform, options)
    why = "TensorRT could not deserialize the cached plan" if rebuild else valid_entry(plan_path, record_path, identity)
    if why is None:
        LOG.info("TensorRT plan for %s: cached, %s", onnx_path, plan_path)
        return plan_path
    LOG.info("TensorRT plan for %s: building (%s); cache %s", onnx_path, why, plan_path)
    platform_key = _sha256(json.dumps([platform.tensorrt_version, platform.device_name]).encode())[:16]
    timing_path = folder / f"timing-{platform_key}.cache"
    timing = timing_path.read_bytes() if timing_path.is_file() else b""
    built = build_plan(trt, onnx, options, platform, str(onnx_path), timing)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(plan_path, built.plan)
    atomic_write_bytes(timing_path, built.timing_cache)
    record = {
        "identity": identity,
        "plan_sha256": _sha256(built.plan),
        "tensors": [tensor.to_dict() for tensor in built.tensors],
    }
    # The record last: an entry interrupted before it is rebuilt, never trusted.
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return plan_path
