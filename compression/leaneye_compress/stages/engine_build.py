"""Build a TensorRT plan from an ONNX (or an engine directory's ONNX) on the machine that will run it,
and write it as an engine directory: model.plan, manifest.json with `"backend": "tensorrt"` and the
`target` block (TensorRT version, GPU, compute capability, the ONNX's sha256, build options, the
plan's inputs and outputs), record.json. Needs TensorRT and cuda-python, no PyTorch (runs on a Jetson).
`--on-target` (`carry_onnx`) builds nothing: it writes the ONNX and the build options, and the first
load on the target builds and caches the plan there (`leaneye.backends.tensorrt.cache`); it runs anywhere.

The ONNX: `--engine DIR` takes DIR/tensorrt/model.onnx when there is one (the calibrate stage's Q/DQ
ONNX for TensorRT) and DIR's own model otherwise; its manifest (input, letterbox, decoder, classes)
is carried over. `--onnx MODEL.onnx` does the same when MODEL.onnx sits in an engine directory;
elsewhere only model.plan and target.json are written (no decoder known: not runnable by leaneye).
What each TensorRT release gets (flags or strongly typed): `leaneye.backends.tensorrt.options`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from leaneye.atomic import atomic_write_bytes
from leaneye.backends.tensorrt.builder import build_plan
from leaneye.backends.tensorrt.libraries import import_cudart, import_tensorrt, running_platform
from leaneye.backends.tensorrt.options import MANIFEST_PRECISION, BuildOptions, translate
from leaneye.backends.tensorrt.platform import Platform
from leaneye.engine import MANIFEST_NAME, Manifest, load_manifest, model_file, parse_manifest
from leaneye.errors import LeanEyeError

from ..artifacts import run_stage

TENSORRT_ONNX = Path("tensorrt") / "model.onnx"
PLAN_NAME = "model.plan"
ONNX_NAME = "model.onnx"
QUANTIZED_PRECISIONS = ("int8", "fp8")


def source_model(onnx: Path | None, engine: Path | None) -> tuple[Path, Manifest | None, Path | None]:
    """(the ONNX to build, the engine manifest to carry over or None, that engine's directory)."""
    if (onnx is None) == (engine is None):
        raise LeanEyeError("leaneye-compress engine: give exactly one of --onnx MODEL.onnx and --engine DIR")
    if engine is not None:
        manifest = load_manifest(engine)
        path = engine / TENSORRT_ONNX if (engine / TENSORRT_ONNX).is_file() else model_file(engine, manifest)
        if path.suffix != ".onnx":
            raise LeanEyeError(f"--engine {engine}: its model {path.name} is not an ONNX to build from")
        return path, manifest, engine
    if not onnx.is_file():
        raise LeanEyeError(f"--onnx {onnx}: file not found")
    for folder in (onnx.parent, onnx.parent.parent if onnx.parent.name == "tensorrt" else None):
        if folder is not None and (folder / MANIFEST_NAME).is_file():
            return onnx, load_manifest(folder), folder
    return onnx, None, None


def check_onnx(path: Path, precision: str) -> None:
    """A valid ONNX, and for int8/fp8 one with explicit Q/DQ (TensorRT 11 has no implicit calibration;
    leaneye uses none on 10.x either)."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise LeanEyeError(f"{path}: not a valid ONNX model ({str(exc).strip().splitlines()[0]})") from None
    if precision in QUANTIZED_PRECISIONS and not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise LeanEyeError(
            f"--precision {precision}: {path} has no QuantizeLinear/DequantizeLinear nodes; build from the calibrate "
            f"stage's engine (--engine CALIBRATED_DIR uses its tensorrt/model.onnx)"
        )


def write_manifest(
    folder: Path, manifest: Manifest, model: str, model_bytes: bytes, precision: str, target: dict, producer: dict
) -> None:
    """`manifest` (the source engine's input, letterbox, decoder, classes) as a TensorRT engine's."""
    data = manifest.to_dict()
    data.update(
        backend="tensorrt",
        model=model,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        precision=MANIFEST_PRECISION[precision],
        target=target,
        producer=producer,
    )
    parse_manifest(data, f"engine {MANIFEST_NAME}")  # what leaneye will read must parse
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_engine(
    options: BuildOptions,
    out: Path,
    onnx: Path | None = None,
    engine: Path | None = None,
    timing_cache: Path | None = None,
    force: bool = False,
    platform: Platform | None = None,
) -> tuple[dict, bool]:
    """Build and write the engine directory `out`; returns (record, skipped). `platform` None = this
    machine's TensorRT and GPU 0 (as the plan runs only there, they are part of the stage's config)."""
    onnx_path, manifest, _ = source_model(onnx, engine)
    check_onnx(onnx_path, options.precision)
    trt = import_tensorrt("leaneye-compress engine")
    if platform is None:
        platform = running_platform(trt, import_cudart("leaneye-compress engine"), 0)
    settings = translate(options, platform.tensorrt_version, platform.compute_capability)
    config = {"build": options.to_dict(), "platform": vars(platform).copy()}
    inputs = {"onnx": onnx_path}

    def produce(folder: Path) -> dict:
        onnx_bytes = onnx_path.read_bytes()
        timing = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
        built = build_plan(trt, onnx_bytes, options, platform, str(onnx_path), timing, log=print)
        target = {
            "tensorrt_version": platform.tensorrt_version,
            "compute_capability": platform.compute_capability,
            "device_name": platform.device_name,
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "tensorrt_build": options.to_dict(),
            "tensorrt_io": [tensor.to_dict() for tensor in built.tensors],
        }
        (folder / PLAN_NAME).write_bytes(built.plan)
        if manifest is not None:
            producer = {"tool": "leaneye-compress engine", "versions": {"tensorrt": platform.tensorrt_version}}
            write_manifest(folder, manifest, PLAN_NAME, built.plan, options.precision, target, producer)
        else:
            (folder / "target.json").write_text(json.dumps(target, indent=2) + "\n", encoding="utf-8")
        if timing_cache is not None:
            atomic_write_bytes(timing_cache, built.timing_cache)
        return {
            "metrics": {"plan_bytes": len(built.plan)},
            "details": {
                "release_line": settings.release_line,
                "strongly_typed": settings.strongly_typed,
                "cast_onnx_to_fp16": settings.cast_onnx_to_fp16,
                "builder_flags": list(settings.builder_flags),
                "runnable": manifest is not None,
            },
        }

    return run_stage("engine", out, inputs, config, produce, force=force)


def carry_onnx(
    options: BuildOptions, out: Path, onnx: Path | None = None, engine: Path | None = None, force: bool = False
) -> tuple[dict, bool]:
    """Write the engine directory `out` carrying the ONNX (model.onnx) and, in its manifest's target,
    `options` and the ONNX's sha256, for the first load on the target to build the plan: no TensorRT or
    GPU is needed here. Returns (record, skipped)."""
    onnx_path, manifest, _ = source_model(onnx, engine)
    if manifest is None:
        raise LeanEyeError(
            f"--on-target: {onnx_path} is in no engine directory, so its input, decoder and classes are unknown; "
            f"give --engine DIR (or an --onnx inside one)"
        )
    check_onnx(onnx_path, options.precision)
    import onnx as onnx_module

    def produce(folder: Path) -> dict:
        onnx_bytes = onnx_path.read_bytes()
        (folder / ONNX_NAME).write_bytes(onnx_bytes)
        target = {"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "tensorrt_build": options.to_dict()}
        producer = {"tool": "leaneye-compress engine --on-target", "versions": {"onnx": onnx_module.__version__}}
        write_manifest(folder, manifest, ONNX_NAME, onnx_bytes, options.precision, target, producer)
        return {"metrics": {"onnx_bytes": len(onnx_bytes)}, "details": {"on_target": True}}

    config = {"build": options.to_dict(), "on_target": True}
    return run_stage("engine", out, {"onnx": onnx_path}, config, produce, force=force)
