"""Which TensorRT and GPU a plan was built for, and whether this machine is one: a plan is tied to
the exact TensorRT release and GPU model that built it (unless built version-compatible, which a
later TensorRT release also runs), and deserializing a foreign one fails opaquely or not at all.
Pure Python: the running platform is passed in (`runtime.running_platform` asks TensorRT and CUDA).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import LeanEyeError
from .options import BuildOptions, version_tuple

REBUILD_HINT = (
    "rebuild it on this machine (leaneye-compress engine --engine ENGINE_DIR --precision P --out DIR), "
    "or ship the engine's ONNX with backend tensorrt to build it here on first load"
)


@dataclass(frozen=True)
class Platform:
    """This machine as TensorRT sees it."""

    tensorrt_version: str
    device_name: str
    compute_capability: str  # "major.minor"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.device_name} (compute capability {self.compute_capability})"


def _padded(version: str) -> tuple[int, ...]:
    return (version_tuple(version) + (0, 0, 0, 0))[:4]


def plan_mismatch(target, platform: Platform) -> str | None:
    """Why a plan with manifest target `target` cannot run on `platform`, or None when it can."""
    if target is None or target.tensorrt_version is None or target.compute_capability is None:
        return "its manifest's target does not say which TensorRT and GPU built it"
    built = (
        f"TensorRT {target.tensorrt_version} on {target.device_name or 'a GPU'} "
        f"(compute capability {target.compute_capability})"
    )
    version_compatible = target.tensorrt_build is not None and target.tensorrt_build.version_compatible
    if version_compatible:
        same_release = _padded(platform.tensorrt_version) >= _padded(target.tensorrt_version)
    else:
        same_release = _padded(platform.tensorrt_version) == _padded(target.tensorrt_version)
    same_gpu = platform.compute_capability == target.compute_capability and (
        target.device_name is None or target.device_name == platform.device_name
    )
    if same_release and same_gpu:
        return None
    kind = (
        "a version-compatible plan runs on that TensorRT release or later only"
        if not same_release and (version_compatible)
        else "a plan runs only on the TensorRT release and GPU that built it"
    )
    return f"it was built for {built}, this machine has {platform.describe()} ({kind})"


def check_plan_target(plan: Path, target, platform: Platform) -> None:
    """Refuse, as one line naming both sides and how to rebuild, a plan built for another machine."""
    why = plan_mismatch(target, platform)
    if why is not None:
        raise LeanEyeError(f"{plan}: {why}; {REBUILD_HINT}")


def cache_key(onnx_sha256: str, platform: Platform, options: BuildOptions) -> str:
    """The build-on-target cache's name for the plan of this ONNX, TensorRT, GPU and build options."""
    identity = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": platform.tensorrt_version,
        "device_name": platform.device_name,
        "compute_capability": platform.compute_capability,
        "build": options.to_dict(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
