"""QDQ emitters: an FP32 ONNX model + the range cache + a placement -> an explicit-quantization QDQ model.

Two flavours from the same ranges (quant/ranges.py), both written by onnxruntime.quantization's
QDQQuantizer from precomputed ranges:

- "ort-cpu": U8S8 (uint8 activations, asymmetric; int8 per-channel symmetric weights; int32 bias),
  Q/DQ around every operator ONNX Runtime's CPU provider fuses into an integer kernel (Conv, Add,
  Mul, Concat, pooling, Resize, Sigmoid, ...), so activations stay 8-bit between them.
- "tensorrt": S8S8, symmetric, zero point 0 everywhere, per-channel int8 weights, float bias;
  Q/DQ on the inputs of Conv and of Add (residual joins) only, one dedicated pair per consumer,
  outputs left to TensorRT's fusions; whatever has no Q/DQ is left to TensorRT's FP16.

A placement is the set of quantizable *layers* kept in float. A layer is a Conv with the activation
that only it feeds (ReLU, Clip, LeakyReLU, or SiLU as Sigmoid + Mul): quantizing a Conv while its
activation stays float (or the reverse) would only add a Q/DQ pair. The decode tail (nodes from
which no Conv is reachable: the box and score arithmetic after the last convolutions) always stays
float: box coordinates in pixels do not survive 8 bits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

from leaneye.errors import LeanEyeError, first_line

FLAVOURS = ("ort-cpu", "tensorrt")
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) needs 13
ORT_CPU_OPS = (
    "Conv",
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Sigmoid",
    "LeakyRelu",
    "Relu",
    "Clip",
)
TENSORRT_OPS = ("Conv", "Add")
SINGLE_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish")


@dataclass(frozen=True)
class Layer:
    """A quantizable unit: a Conv node and the activation nodes only it feeds."""

    name: str  # the Conv node's name
    nodes: tuple[str, ...]  # node names, the Conv first
    kind: str  # "conv" or "depthwise conv"
    activation: str  # "", "relu", "silu", ...

    def describe(self) -> str:
        return f"{self.kind}{' + ' + self.activation if self.activation else ''}"


def prepare_model(data: bytes, where: str):
    """The FP32 model as the emitters and calibrators need it: checked by onnx.checker (a failure is a
    one-line LeanEyeError naming `where`), every node named uniquely, opset >= 13, shapes inferred."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises ValidationError, DecodeError, ... for a bad file
        raise LeanEyeError(f"{where}: not a valid ONNX model (onnx.checker): {first_line(exc)}") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise LeanEyeError(
                f"{where}: cannot raise opset {opset} to {MIN_OPSET} for per-channel QDQ: {first_line(exc)}"
            ) from None
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return save_and_reload_model_with_shape_infer(model)


def _consumers(graph) -> dict[str, list]:
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def decode_tail(model) -> set[str]:
    """Names of the non-Conv nodes from which no Conv is reachable: the decoding after the network."""
    consumers = _consumers(model.graph)
    reaches_conv: dict[str, bool] = {}
    for node in reversed(model.graph.node):  # ONNX graphs are topologically sorted
        reaches_conv[node.name] = any(
            c.op_type == "Conv" or reaches_conv.get(c.name, False)
            for output in node.output
            for c in consumers.get(output, [])
        )
    return {node.name for node in model.graph.node if node.op_type != "Conv" and not reaches_conv[node.name]}


def _activation(conv, consumers) -> tuple[list, str]:
    """The activation nodes only `conv` feeds, and the activation's name."""
    out = conv.output[0]
    users = consumers.get(out, [])
    if len(users) == 1 and users[0].op_type in SINGLE_ACTIVATIONS:
        return [users[0]], users[0].op_type.lower()
    if len(users) == 2:
        sigmoid = next((u for u in users if u.op_type == "Sigmoid"), None)
        mul = next((u for u in users if u.op_type == "Mul"), None)
        if (
            sigmoid is not None
            and mul is not None
            and set(mul.input) == {out, sigmoid.output[0]}
            and [u.name for u in consumers.get(sigmoid.output[0], [])] == [mul.name]
        ):
            return [sigmoid, mul], "silu"
    return [], ""


def quantizable_layers(model) -> list[Layer]:
    """Every Conv of the model as a Layer, in graph order."""
    consumers = _consumers(model.graph)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = shapes.get(node.input[1], ())
        depthwise = group > 1 and len(weight) == 4 and weight[1] == 1
        activation_nodes, activation = _activation(node, consumers)
        layers.append(
            Layer(
                node.name,
                (node.name, *(n.name for n in activation_nodes)),
                "depthwise conv" if depthwise else "conv",
                activation,
            )
        )
    return layers


def resolve_layers(model, names: Iterable[str], where: str = "placement") -> list[Layer]:
    """The model's layers named by their Conv node names; an unknown name is a one-line error."""
    by_name = {layer.name: layer for layer in quantizable_layers(model)}
    layers = []
    for name in names:
        if name not in by_name:
            raise LeanEyeError(f"{where}: no quantizable layer (Conv node) named {name!r} in this model")
        layers.append(by_name[name])
    return layers


def emit_qdq(model, ranges, flavour: str, float_layers: Iterable[str] = (), only: Iterable[str] | None = None):
    """The QDQ form of `model` (as `prepare_model` returns it) in `flavour`, with the layers named in
    `float_layers` (their Conv node names) left in float. With `only`, just the named layers are
    quantized (everything else float): a layer's sensitivity alone. `ranges` is a RangeCache.
    Returns a new ModelProto; `model` is not changed."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    if flavour not in FLAVOURS:
        raise LeanEyeError(f"emitter {flavour!r}: expected one of {', '.join(FLAVOURS)}")
    excluded = decode_tail(model) | {name for layer in resolve_layers(model, float_layers) for name in layer.nodes}
    if only is not None:
        kept = {name for layer in resolve_layers(model, only) for name in layer.nodes}
        excluded |= {node.name for node in model.graph.node if node.name not in kept}
    missing = {
        name
        for node in model.graph.node
        if node.op_type == "Conv" and node.name not in excluded
        for name in node.input[:1]
        if name not in ranges.ranges
    }
    if missing:
        raise LeanEyeError(
            f"ranges: no calibration range for tensor {sorted(missing)[0]!r} of this model "
            f"({len(missing)} missing); the ranges were collected on another model"
        )
    if flavour == "ort-cpu":
        activation_type, ops = QuantType.QUInt8, ORT_CPU_OPS
        options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    else:
        activation_type, ops = QuantType.QInt8, TENSORRT_OPS
        options = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,  # TensorRT takes float bias and folds it itself
            "DedicatedQDQPair": True,  # TensorRT cannot fuse a Q/DQ pair shared by two consumers
            "OpTypesToExcludeOutputQuantization": list(ops),
        }
    quantizer = QDQQuantizer(
        copy.deepcopy(model),
        True,  # per-channel weights
        False,  # no reduced range: VNNI and TensorRT both take the full 8 bits
        QuantType.QInt8,
        activation_type,
        ranges.tensors_data(),
        [],
        sorted(excluded),
        list(ops),
        options,
    )
    quantizer.quantize_model()
    quantized = quantizer.model.model
    _read_float(quantized, model, excluded)
    quantizer.model.topological_sort()  # the quantizer appends Q/DQ nodes after their consumers
    quantizer.model.clean_initializers()  # the scales and zero points of the pairs removed
    return quantized


def _read_float(model, original, float_nodes: set[str]) -> None:
    """Float nodes read their inputs unquantized.

    The quantizer also quantizes the *outputs* of quantized nodes, so a float node fed by one would
    still read a rounded tensor, and returning a layer to float would not undo the error of the
    tensor it reads (the very error sensitivity measures). Each float node's input that comes
    through an activation Q -> DQ pair is rewired to the tensor before the pair; pairs left without
    consumers are removed. Where the quantizer folded a ReLU or Clip into the uint8 range (its
    producer now writes the pre-activation values under the activation's output name), a copy of
    the activation computes the float values again.
    """
    import copy as copying

    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    kept = {node.name for node in graph.node}
    original_producer = {output: node for node in original.graph.node for output in node.output}
    restored: dict[str, str] = {}  # tensor -> its float value's name, where an activation was folded
    for node in list(graph.node):
        if node.name not in float_nodes:
            continue
        for k, name in enumerate(node.input):
            dequantize = producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[0] in initializers:
                continue
            tensor = quantize.input[0]
            folded = original_producer.get(tensor)
            if folded is not None and folded.name not in kept:
                if tensor not in restored:
                    activation = copying.deepcopy(folded)
                    activation.input[0] = tensor
                    activation.output[0] = f"{tensor}_float"
                    activation.name = f"{folded.name}_float"
                    graph.node.append(activation)
                    restored[tensor] = activation.output[0]
                tensor = restored[tensor]
            node.input[k] = tensor
    while True:  # drop Q/DQ nodes nobody reads any more (a DQ first, then the Q that fed it)
        read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        unused = [
            node
            for node in graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.output[0] not in read
        ]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)
