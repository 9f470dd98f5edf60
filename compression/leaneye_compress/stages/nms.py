"""NMS in the graph: an engine whose model ends before NMS ("builtin" or "yolox" decoder) to one whose
model ends with it ("end2end" decoder), by graph surgery with onnx-graphsurgeon.

    leaneye-compress nms --engine engines/yolox_nano --kind onnx --score-threshold 0.3 --out engines/yolox_nano_nms

The appended tail does in the graph what the CPU path (`leaneye.vision.decoders` + `leaneye.vision.nms`)
does after it: decode the boxes (YOLOX: cell offsets and strides, score = objectness x class score),
keep each box's best class only, suppress, sort by score and keep at most `max_detections`. Two kinds:

- "onnx": the standard `NonMaxSuppression` operator (opset >= 11). ONNX Runtime runs it; TensorRT
  maps it to its INMSLayer.
- "efficientnms": TensorRT's `EfficientNMS_TRT` plugin node (domain "trt.plugins", plugin_version "1"),
  for TensorRT 10 users. ONNX Runtime cannot run it: such an engine is input for the TensorRT builder.

Both end in one output, `detections` [1, K, 6] (x1, y1, x2, y2, score, class) in network-input pixels,
the layout of the existing "end2end" decoder, which runs no NMS afterwards. The plugin's own four
outputs (num_detections, boxes, scores, classes) are folded into it: rows past num_detections get
score 0, which the end2end decoder drops since the baked score threshold is above 0.

The thresholds are baked into the graph and recorded in the new manifest's `producer.nms`. A
runtime score threshold (`--conf`) below the baked one cannot bring back what the graph removed;
the runtime's IoU threshold and class-agnostic setting no longer apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leaneye.engine import MANIFEST_NAME, load_manifest, model_file, tool_versions, write_engine
from leaneye.errors import LeanEyeError, first_line
from leaneye.vision.decoders import yolox_grid

from ..config import bounded, from_mapping, to_mapping

KINDS = ("onnx", "efficientnms")
SOURCE_DECODERS = ("builtin", "yolox")
OUTPUT_NAME = "detections"
MIN_OPSET = 11  # NonMaxSuppression with its opset-11 semantics, TopK with K as an input
PLUGIN_DOMAIN = "trt.plugins"  # where onnx.checker lets a plugin op be; the TensorRT parser looks plugins up by op name
# EfficientNMS_TRT sorts at most 4096 candidates before suppressing: more output boxes than that mean nothing.
MAX_OUTPUT_BOXES = 4096


@dataclass(frozen=True)
class NmsConfig:
    kind: str = bounded("onnx", choices=KINDS)
    # Above 0: padding rows carry score 0 and must never pass; the plugin also slows below ~0.01.
    score_threshold: float = bounded(0.25, low=0.0, low_open=True, high=1.0)
    iou_threshold: float = bounded(0.45, low=0.0, high=1.0)
    max_detections: int = bounded(300, low=1, high=MAX_OUTPUT_BOXES)
    class_agnostic: bool = False

    def __post_init__(self) -> None:
        if self.kind == "efficientnms" and self.iou_threshold <= 0:
            # TensorRT's plugin config (EfficientNMSPlugin_PluginConfig.yaml) bounds iou_threshold to (0, inf).
            raise ValueError("iou_threshold 0 with kind efficientnms: EfficientNMS_TRT needs an IoU threshold above 0")


class _Tail:
    """Adds nodes to the graph with readable, unique names under the prefix `nms/`."""

    def __init__(self, graph):
        self.graph = graph
        self.count = 0

    def _name(self, what: str) -> str:
        self.count += 1
        return f"nms/{what}_{self.count}"

    def const(self, what: str, values) -> object:
        import onnx_graphsurgeon as gs

        return gs.Constant(self._name(what), np.asarray(values))

    def op(self, op: str, inputs: list, outputs: int = 1, domain: str | None = None, **attrs):
        import onnx_graphsurgeon as gs

        name = self._name(op.lower())
        results = [gs.Variable(f"{name}:{k}") for k in range(outputs)]
        self.graph.nodes.append(gs.Node(op, name, attrs, list(inputs), results, domain=domain))
        return results[0] if outputs == 1 else results

    def slice_last(self, tensor, start: int, stop: int):
        return self.op(
            "Slice", [tensor, self.const("start", [start]), self.const("stop", [stop]), self.const("axis", [2])]
        )

    def reshape(self, tensor, shape):
        return self.op("Reshape", [tensor, self.const("shape", np.asarray(shape, np.int64))])


def _candidates(tail: _Tail, output, manifest, where: str):
    """(boxes [1, N, 4] xyxy, class scores [1, N, C]) from the model's output, as the CPU decoder reads it."""
    classes = len(manifest.class_names)
    shape = output.shape
    first = 4 if manifest.decoder == "builtin" else 5
    if shape is None or len(shape) != 3 or shape[0] != 1 or shape[2] != first + classes:
        raise LeanEyeError(
            f"{where}: the model's output {output.name!r} has shape {shape}; decoder {manifest.decoder!r} with "
            f"{classes} class names expects [1, N, {first + classes}]"
        )
    if manifest.decoder == "builtin":
        return tail.slice_last(output, 0, 4), tail.slice_last(output, 4, 4 + classes)
    strides = tuple(manifest.decoder_params.get("strides", (8, 16, 32)))
    cells, cell_strides = yolox_grid(tuple(manifest.input.size), strides)
    if shape[1] != len(cells):
        height, width = manifest.input.size
        raise LeanEyeError(
            f"{where}: the model's output has {shape[1]} cells but strides {list(strides)} over a "
            f"{width}x{height} input give {len(cells)}"
        )
    # The same float32 arithmetic, in the same order, as leaneye.vision.decoders.yolox_decoder.
    centres = tail.op("Add", [tail.slice_last(output, 0, 2), tail.const("cells", cells[None])])
    centres = tail.op("Mul", [centres, tail.const("strides", cell_strides[None])])
    half = tail.op(
        "Mul", [tail.op("Exp", [tail.slice_last(output, 2, 4)]), tail.const("half", cell_strides[None] * 0.5)]
    )
    boxes = tail.op("Concat", [tail.op("Sub", [centres, half]), tail.op("Add", [centres, half])], axis=2)
    scores = tail.op("Mul", [tail.slice_last(output, 5, 5 + classes), tail.slice_last(output, 4, 5)])
    return boxes, scores


def _best_class_only(tail: _Tail, scores, classes: int):
    """(best class [1, N, 1] int64, its score [1, N, 1], scores with every other class zeroed [1, N, C]).

    The CPU path gives each box its best class only; NMS over every class would let one box through
    once per class. ArgMax picks the first of equal scores, as NumPy's argmax does.
    """
    best_class = tail.op("ArgMax", [scores], axis=2, keepdims=1)
    best_score = tail.op("GatherElements", [scores, best_class], axis=2)
    is_best = tail.op("Equal", [best_class, tail.const("class_ids", np.arange(classes, dtype=np.int64))])
    masked = tail.op("Where", [is_best, scores, tail.const("zero", np.float32(0.0))])
    return best_class, best_score, masked


def _onnx_nms(tail: _Tail, boxes, best_class, best_score, masked, config: NmsConfig):
    # Class-aware: one score row per class, each box scoring in its best class only; agnostic: one row.
    per_class = tail.op("Transpose", [best_score if config.class_agnostic else masked], perm=[0, 2, 1])
    selected = tail.op(
        "NonMaxSuppression",
        [
            boxes,
            per_class,
            tail.const("max_per_class", np.array([config.max_detections], np.int64)),
            tail.const("iou_threshold", np.array([config.iou_threshold], np.float32)),
            # NonMaxSuppression keeps score > threshold (ONNX Runtime), the CPU decoder score >= threshold:
            # the float32 just below the threshold makes the two agree for every float32 score.
            tail.const("score_threshold", np.nextafter(np.float32([config.score_threshold]), np.float32(0))),
        ],
        center_point_box=0,
    )  # [S, 3]: batch, class, box index; grouped by class
    box_index = tail.op("Gather", [selected, tail.const("box_column", np.int64(2))], axis=1)
    scores = tail.op("Gather", [tail.reshape(best_score, [-1]), box_index], axis=0)
    # All selected, best first (TopK puts equal scores in index order), then at most max_detections.
    count = tail.op("Shape", [scores])
    top_scores, order = tail.op("TopK", [scores, count], outputs=2, axis=0, largest=1, sorted=1)
    keep = [tail.const("start", [0]), tail.const("stop", [config.max_detections]), tail.const("axis", [0])]
    top_scores = tail.op("Slice", [top_scores, *keep])
    kept = tail.op("Gather", [box_index, tail.op("Slice", [order, *keep])], axis=0)
    kept_boxes = tail.op("Gather", [tail.reshape(boxes, [-1, 4]), kept], axis=0)
    kept_classes = tail.op("Cast", [tail.op("Gather", [tail.reshape(best_class, [-1]), kept], axis=0)], to=1)
    rows = tail.op(
        "Concat", [kept_boxes, tail.reshape(top_scores, [-1, 1]), tail.reshape(kept_classes, [-1, 1])], axis=1
    )
    return tail.reshape(rows, [1, -1, 6])


def efficient_nms_attributes(config: NmsConfig) -> dict:
    """The EfficientNMS_TRT node's attributes (TensorRT's efficientNMSPlugin README, "Parameters")."""
    return {
        "plugin_version": "1",
        "plugin_namespace": "",
        "score_threshold": float(config.score_threshold),
        "iou_threshold": float(config.iou_threshold),
        "max_output_boxes": int(config.max_detections),
        "background_class": -1,  # no background class among the detector's classes
        "score_activation": 0,  # scores are probabilities already (sigmoided in the graph)
        "class_agnostic": int(config.class_agnostic),
        "box_coding": 0,  # BoxCorner: x1, y1, x2, y2
    }


def _efficient_nms(tail: _Tail, boxes, masked, config: NmsConfig):
    count, nms_boxes, nms_scores, nms_classes = tail.op(
        "EfficientNMS_TRT", [boxes, masked], outputs=4, domain=PLUGIN_DOMAIN, **efficient_nms_attributes(config)
    )
    k = config.max_detections
    # Rows past num_detections are padding: score 0 (and class 0), which the end2end decoder drops.
    valid = tail.op("Less", [tail.const("row", np.arange(k, dtype=np.int32)[None]), count])
    zero = tail.const("zero", np.float32(0.0))
    scores = tail.op("Where", [valid, nms_scores, zero])
    classes = tail.op("Where", [valid, tail.op("Cast", [nms_classes], to=1), zero])
    return tail.op("Concat", [nms_boxes, tail.reshape(scores, [1, k, 1]), tail.reshape(classes, [1, k, 1])], axis=2)


def nms_graph(model, manifest, config: NmsConfig, where: str):
    """The ONNX ModelProto `model` with NMS appended (not checked; see `append_nms`)."""
    import onnx
    import onnx_graphsurgeon as gs

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise LeanEyeError(
            f"{where}: the model uses ONNX opset {opset}; NMS in the graph needs opset {MIN_OPSET} or later"
        )
    graph = gs.import_onnx(model)
    if len(graph.outputs) != 1:
        raise LeanEyeError(
            f"{where}: the model has outputs {[t.name for t in graph.outputs]}; expected one, as decoder "
            f"{manifest.decoder!r} reads"
        )
    tail = _Tail(graph)
    boxes, scores = _candidates(tail, graph.outputs[0], manifest, where)
    best_class, best_score, masked = _best_class_only(tail, scores, len(manifest.class_names))
    if config.kind == "onnx":
        detections = _onnx_nms(tail, boxes, best_class, best_score, masked, config)
        rows = "K"
    else:
        detections = _efficient_nms(tail, boxes, masked, config)
        rows = config.max_detections
    detections.name, detections.dtype, detections.shape = OUTPUT_NAME, np.float32, [1, rows, 6]
    graph.outputs = [detections]
    graph.cleanup().toposort()
    result = gs.export_onnx(graph)
    result.ir_version = model.ir_version  # what the source's runtime loads, not the newest onnx writes
    del result.metadata_props[:]
    result.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(result, full_check=True)
    return result


def append_nms(config: NmsConfig, engine: Path, out: Path, force: bool = False) -> dict:
    """Engine directory `engine` (decoder builtin or yolox) → engine directory `out` (decoder end2end),
    written atomically; returns what was done (also in the new manifest's producer.nms)."""
    import onnx

    config = from_mapping(NmsConfig, to_mapping(config), "nms config")  # a config built in code is checked too
    engine = Path(engine)
    manifest = load_manifest(engine)
    where = str(engine / MANIFEST_NAME)
    if manifest.decoder not in SOURCE_DECODERS:
        already = " (its model suppresses already)" if manifest.decoder == "end2end" else ""
        raise LeanEyeError(
            f"{where}: field 'decoder.type' is {manifest.decoder!r}{already}; NMS can be appended to "
            f"{' or '.join(SOURCE_DECODERS)} engines"
        )
    path = model_file(engine, manifest)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ... for a file that is not ONNX
        raise LeanEyeError(f"{path}: not a valid ONNX model: {first_line(exc)}") from None
    result = nms_graph(model, manifest, config, str(path))
    data = result.SerializeToString()

    nms = {
        **to_mapping(config),
        "operator": "NonMaxSuppression" if config.kind == "onnx" else "EfficientNMS_TRT",
        "source_engine": str(engine),
        "source_decoder": manifest.decoder,
        "source_model_sha256": manifest.model_sha256,
    }
    new = manifest.to_dict()
    new["decoder"] = {"type": "end2end"}
    new["producer"] = {
        "tool": "leaneye-compress nms",
        "versions": tool_versions("leaneye-compress", "onnx", "onnx-graphsurgeon"),
        "nms": nms,
        "source_producer": manifest.producer,
    }
    written = write_engine(out, data, new, force=force)
    return {**nms, "engine": str(out), "onnx_bytes": len(data), "model_sha256": written.model_sha256}
