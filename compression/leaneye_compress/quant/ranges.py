"""The calibration-range cache: one activation range per tensor of an FP32 ONNX model, collected once
by ONNX Runtime's calibrators and shared by every QDQ emitter (quant/emit.py) and by QAD.

ranges.json:

    {
      "format": "leaneye-ranges", "version": 1,
      "method": "minmax",            # minmax | entropy | percentile
      "percentile": 99.999,          # percentile only
      "frames": 64,                  # calibration frames seen
      "sources": ["clip.mp4", ...],  # where they came from
      "model_sha256": "...",         # the FP32 ONNX the ranges belong to
      "ranges": {"tensor name": [low, high], ...}
    }

Ranges are stored asymmetric (what was observed, clipped by the method); an emitter that wants
symmetric ranges (TensorRT's S8S8) widens them itself, so one cache serves both targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leaneye.errors import LeanEyeError

RANGES_FORMAT = "leaneye-ranges"
RANGES_VERSION = 1
METHODS = ("minmax", "entropy", "percentile")
# Frames per calibrator pass: ONNX Runtime's calibrators hold every intermediate output of a pass in memory.
FRAMES_PER_PASS = 8


@dataclass(frozen=True)
class RangeCache:
    method: str
    frames: int
    ranges: dict  # tensor name -> (low, high) floats
    sources: tuple = ()
    percentile: float | None = None
    model_sha256: str = ""

    def to_dict(self) -> dict:
        return {
            "format": RANGES_FORMAT,
            "version": RANGES_VERSION,
            "method": self.method,
            **({"percentile": self.percentile} if self.percentile is not None else {}),
            "frames": self.frames,
            "sources": list(self.sources),
            "model_sha256": self.model_sha256,
            "ranges": {name: [low, high] for name, (low, high) in sorted(self.ranges.items())},
        }

    def tensors_data(self):
        """The ranges as onnxruntime.quantization's TensorsData (a fresh one: its quantizer adjusts it in place)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        return TensorsData(
            CalibrationMethod.MinMax,
            {
                name: TensorData(lowest=np.float32(low), highest=np.float32(high))
                for name, (low, high) in self.ranges.items()
            },
        )


def save_ranges(cache: RangeCache, path: Path) -> None:
    Path(path).write_text(json.dumps(cache.to_dict(), indent=1) + "\n", encoding="utf-8")


def load_ranges(path: Path | str) -> RangeCache:
    """Read and check a ranges.json written by the calibrate stage; every mistake is one line naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "ranges.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeanEyeError(f"{path}: file not found; expected the calibrate stage's ranges.json") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise LeanEyeError(f"{path}: expected JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RANGES_FORMAT or data.get("version") != RANGES_VERSION:
        raise LeanEyeError(f"{path}: expected a {RANGES_FORMAT} file, version {RANGES_VERSION}")
    if data.get("method") not in METHODS:
        raise LeanEyeError(f"{path}: field 'method': expected one of {', '.join(METHODS)}, got {data.get('method')!r}")
    ranges = data.get("ranges")
    if not isinstance(ranges, dict) or not ranges:
        raise LeanEyeError(f"{path}: field 'ranges': expected a non-empty mapping of tensor names to [low, high]")
    checked = {}
    for name, value in ranges.items():
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            or value[0] > value[1]
        ):
            raise LeanEyeError(f"{path}: range of tensor {name!r}: expected [low, high] finite numbers, got {value!r}")
        checked[name] = (float(value[0]), float(value[1]))
    return RangeCache(
        method=data["method"],
        frames=int(data.get("frames", 0)),
        ranges=checked,
        sources=tuple(data.get("sources", ())),
        percentile=data.get("percentile"),
        model_sha256=str(data.get("model_sha256", "")),
    )


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader over network inputs (N, C, H, W), one frame per run."""

    def __init__(self, input_name: str, inputs: np.ndarray):
        self.input_name = input_name
        self.inputs = inputs
        self.position = 0

    def get_next(self):
        if self.position >= len(self.inputs):
            return None
        self.position += 1
        return {self.input_name: self.inputs[self.position - 1 : self.position]}


def collect_ranges(
    model_bytes: bytes,
    input_name: str,
    inputs: np.ndarray,
    method: str = "minmax",
    percentile: float = 99.999,
    threads: int = 0,
    sources: Sequence[str] = (),
    model_sha256: str = "",
    progress=None,
) -> RangeCache:
    """Activation ranges of every float tensor of the model over `inputs` (the runtime's network
    inputs of the calibration frames), by ONNX Runtime's MinMax, Entropy or Percentile calibrator.

    `progress(frames_done)` is called after each pass.
    """
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in METHODS:
        raise LeanEyeError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    calibration_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    # Asymmetric for every method (Percentile defaults to symmetric): the TensorRT emitter symmetrises.
    options = {"symmetric": False, **({"percentile": percentile} if method == "percentile" else {})}
    with tempfile.TemporaryDirectory(prefix="leaneye-calibrate-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(model_bytes)
        # The histogram calibrators print their progress to stdout; the stage reports its own.
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(
                model_path,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=calibration_method,
                extra_options=options,
            )
            session_options = ort.SessionOptions()
            session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session_options.intra_op_num_threads = threads
            calibrator.infer_session = ort.InferenceSession(
                calibrator.augmented_model_path, sess_options=session_options, providers=["CPUExecutionProvider"]
            )
            for start in range(0, len(inputs), FRAMES_PER_PASS):
                calibrator.collect_data(_Batches(input_name, inputs[start : start + FRAMES_PER_PASS]))
                if progress is not None:
                    progress(min(start + FRAMES_PER_PASS, len(inputs)))
            computed = calibrator.compute_data()
    ranges = {}
    for name, data in computed.items():
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise LeanEyeError(
                f"calibration: tensor {name!r} took NaN or infinite values on the calibration frames; "
                "the FP32 model is not finite there"
            )
        ranges[name] = (min(low, high), max(low, high))
    return RangeCache(
        method=method,
        frames=len(inputs),
        ranges=ranges,
        sources=tuple(sources),
        percentile=percentile if method == "percentile" else None,
        model_sha256=model_sha256,
    )
