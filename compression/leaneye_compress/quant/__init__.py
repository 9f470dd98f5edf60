"""INT8 post-training quantization for ONNX detectors: one calibration-range cache, two QDQ emitters.

Public API (used by the calibrate and QAD stages):

    model = prepare_model(onnx_bytes, where)                  # checked, nodes named, opset >= 13, shapes inferred
    ranges = load_ranges(calibrate_out / "ranges.json")       # or collect_ranges(...)
    layers = quantizable_layers(model)                        # Conv (+ its activation) units, graph order
    qdq = emit_qdq(model, ranges, "tensorrt", float_layers=chosen_float_layers(calibrate_out))
"""

from .emit import FLAVOURS, Layer, decode_tail, emit_qdq, prepare_model, quantizable_layers, resolve_layers
from .ranges import METHODS, RangeCache, collect_ranges, load_ranges, save_ranges

__all__ = [
    "FLAVOURS",
    "METHODS",
    "Layer",
    "RangeCache",
    "chosen_float_layers",
    "collect_ranges",
    "decode_tail",
    "emit_qdq",
    "load_ranges",
    "prepare_model",
    "quantizable_layers",
    "resolve_layers",
    "save_ranges",
]


def chosen_float_layers(calibrate_out) -> tuple[str, ...]:
    """The layers (Conv node names) the calibrate stage kept in float in the INT8 placement it chose
    (for FP32 chosen on CPU: the placement of the INT8 configuration it emitted for TensorRT)."""
    from pathlib import Path

    from leaneye.errors import LeanEyeError

    from ..artifacts import read_record

    record = read_record(Path(calibrate_out))
    placement = (record or {}).get("details", {}).get("int8_placement")
    if record is None or record.get("stage") != "calibrate" or placement is None:
        raise LeanEyeError(f"{calibrate_out}: expected a calibrate stage output (record.json with its INT8 placement)")
    return tuple(placement["float_layers"])
