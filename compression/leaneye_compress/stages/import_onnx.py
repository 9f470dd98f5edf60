"""`leaneye-compress import`: wrap an external ONNX detector into an engine directory.

    leaneye-compress import yolox_nano.onnx --decoder yolox --classes coco_classes.txt --out engines/yolox_nano
    leaneye-compress import yolo11n.onnx --decoder ultralytics --out engines/yolo11n

The model is checked (onnx.checker), its input name and shape read from the graph, run once on
a blank input to prove that the chosen decoder reads its outputs, and copied with a manifest
(leaneye.engine) that records how frames must be prepared for it and how its outputs are
decoded. Preparation defaults follow each family's own inference code:

- yolox: BGR, raw 0-255, letterbox aligned top-left, padded with 114;
- ultralytics, end2end: RGB scaled to 0-1, letterbox centred, padded with 114;
- builtin (the project's own models): LeanDet's input contract (models/contract.py), as `export`
  writes it: BGR scaled to 0-1, centred, 114.

Ultralytics exports carry `names`, `imgsz` and `stride` in the ONNX metadata; they are read, so
--classes is optional there.
"""

from __future__ import annotations

import ast
from pathlib import Path

from leaneye.atomic import check_output_path
from leaneye.engine import file_sha256, parse_manifest, tool_versions, write_engine
from leaneye.errors import LeanEyeError, first_line

from ..models import contract

INPUT_FORMATS = {"bgr255": ("bgr", 1.0), "rgb01": ("rgb", 1.0 / 255.0), "bgr01": ("bgr", 1.0 / 255.0)}
BUILTIN_FORMAT = next(name for name, fmt in INPUT_FORMATS.items() if fmt == (contract.COLOR, contract.SCALE))
DEFAULTS = {  # decoder -> (input format, letterbox align, pad value)
    "yolox": ("bgr255", "top-left", 114),
    "ultralytics": ("rgb01", "center", 114),
    "end2end": ("rgb01", "center", 114),
    "builtin": (BUILTIN_FORMAT, contract.LETTERBOX_ALIGN, contract.PAD_VALUE),  # as `export` writes it
}
YOLOX_STRIDES = [8, 16, 32]


def read_class_names(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LeanEyeError(f"{path}: cannot read class names ({exc})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise LeanEyeError(f"{path}: expected one class name per line, found none")
    return names


def ultralytics_metadata(model) -> dict:
    """`names` (list, by class index), `imgsz` ([h, w]) and `stride` from an Ultralytics export's metadata, where present.

    Ultralytics writes these as Python literals (a dict for names); literal_eval parses them without running code.
    """
    props = {prop.key: prop.value for prop in model.metadata_props}
    found = {}
    for key in ("names", "imgsz", "stride"):
        if key not in props:
            continue
        try:
            value = ast.literal_eval(props[key])
        except (ValueError, SyntaxError):
            raise LeanEyeError(f"ONNX metadata '{key}': expected a Python literal, got {props[key][:80]!r}") from None
        if key == "names":
            if not isinstance(value, dict) or sorted(value) != list(range(len(value))):
                raise LeanEyeError(
                    f"ONNX metadata 'names': expected a dict {{0: 'name', 1: ...}}, got {props[key][:80]!r}"
                )
            value = [str(value[i]) for i in range(len(value))]
        elif key == "imgsz":
            value = [value, value] if isinstance(value, int) else list(value)
        found[key] = value
    return found


def check_input_size(size, what: str) -> None:
    """Height and width within 1..MAX_INPUT_SIDE: a larger one would only fail later, out of memory."""
    if any(not 0 < side <= contract.MAX_INPUT_SIDE for side in size):
        raise LeanEyeError(
            f"{what} {size[0]}x{size[1]} (height x width): expected sides from 1 to {contract.MAX_INPUT_SIDE}"
        )


def _dims(value_info) -> list:
    """Dimensions of a graph input/output: ints where fixed, None where symbolic."""
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in value_info.type.tensor_type.shape.dim]


def import_model(
    model_path: Path,
    decoder: str,
    out: Path,
    classes: Path | None = None,
    input_format: str | None = None,
    align: str | None = None,
    input_size: tuple[int, int] | None = None,
    force: bool = False,
) -> dict:
    """Check `model_path` and write the engine directory `out`; returns the manifest written."""
    import onnx

    model_path = Path(model_path)
    check_output_path(out, force, "engine directory")
    if input_size is not None:
        check_input_size(input_size, "--input-size")
    if not model_path.is_file():
        raise LeanEyeError(f"{model_path}: expected an ONNX model file")
    try:
        onnx.checker.check_model(str(model_path))
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises ValidationError, DecodeError, ... for a bad file
        raise LeanEyeError(f"{model_path}: not a valid ONNX model: {first_line(exc)}") from None
    metadata = ultralytics_metadata(model)

    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise LeanEyeError(f"{model_path}: expected one image input, found {[value.name for value in inputs]}")
    graph_input = inputs[0]
    elem_type = graph_input.type.tensor_type.elem_type
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    if elem_type not in dtypes:
        raise LeanEyeError(
            f"{model_path}: input {graph_input.name!r} has element type "
            f"{onnx.TensorProto.DataType.Name(elem_type)}; expected FLOAT or FLOAT16"
        )
    dims = _dims(graph_input)
    if len(dims) != 4 or dims[1] not in (3, None) or dims[0] not in (1, None):
        raise LeanEyeError(f"{model_path}: input {graph_input.name!r} has shape {dims}; expected [1, 3, H, W]")
    height, width = dims[2], dims[3]
    if height is None or width is None:
        fallback = input_size or metadata.get("imgsz")
        if fallback is None:
            raise LeanEyeError(
                f"{model_path}: input {graph_input.name!r} has dynamic height/width {dims[2:]}; "
                "pass --input-size HEIGHT WIDTH"
            )
        height, width = height or fallback[0], width or fallback[1]
    elif input_size is not None and tuple(input_size) != (height, width):
        raise LeanEyeError(
            f"--input-size: the model's input is fixed at {height}x{width} (height x width), "
            f"not {input_size[0]}x{input_size[1]}"
        )
    check_input_size((height, width), f"{model_path}: input {graph_input.name!r}")
    stride = metadata.get("stride")
    if isinstance(stride, int) and (height % stride or width % stride):
        raise LeanEyeError(f"--input-size: {height}x{width} must be a multiple of the model's stride {stride}")

    if classes is not None:
        class_names = read_class_names(classes)
    elif "names" in metadata:
        class_names = metadata["names"]
    else:
        raise LeanEyeError(
            f"--classes: {model_path.name} carries no class names in its metadata; "
            "pass a file with one class name per line"
        )

    default_format, default_align, pad_value = DEFAULTS[decoder]
    color, scale = INPUT_FORMATS[input_format or default_format]
    manifest = {
        "format_version": 1,
        "backend": "onnxruntime",
        "precision": "fp16" if dtypes[elem_type] == "float16" else "fp32",
        "model": "model.onnx",
        "input": {
            "name": graph_input.name,
            "shape": [1, 3, height, width],
            "layout": "NCHW",
            "dtype": dtypes[elem_type],
            "color": color,
            "scale": scale,
            "mean": None,
            "std": None,
        },
        "letterbox": {"align": align or default_align, "pad_value": pad_value},
        "decoder": {"type": decoder, **({"strides": YOLOX_STRIDES} if decoder == "yolox" else {})},
        "class_names": class_names,
        "producer": {
            "tool": "leaneye-compress import",
            "source": model_path.name,
            "versions": tool_versions("leaneye", "leaneye-compress", "onnx", "onnxruntime", "numpy"),
        },
    }
    _check_decodes(model_path, manifest)
    return write_engine(out, model_path, manifest, force=force).to_dict()


def _check_decodes(model_path: Path, manifest: dict) -> None:
    """Run the model once, as activating its engine will, before anything is written.

    The graph's declared output shapes are often symbolic (dynamic exports), so only a run shows
    whether --decoder and the class names fit the outputs; a mismatch fails here, naming the
    layout the decoder expected, instead of on the vehicle.
    """
    from leaneye.backends import BackendOptions
    from leaneye.backends.onnxruntime import OnnxRuntimeBackend
    from leaneye.detector import Detector, NonFiniteOutputs, OutputsDoNotFit

    checked = parse_manifest({**manifest, "model_sha256": file_sha256(model_path)}, str(model_path))
    backend = OnnxRuntimeBackend(model_path, checked.input.name, checked.input.shape, BackendOptions(threads=1))
    detector = Detector(checked, backend)
    try:
        detector.activate()
    except OutputsDoNotFit as exc:
        raise LeanEyeError(
            f"{model_path.name}: --decoder {checked.decoder} and its {len(checked.class_names)} class names "
            f"do not fit the model's outputs: {exc.detail}"
        ) from None
    except NonFiniteOutputs as exc:
        raise LeanEyeError(f"{model_path.name}: {exc}") from None
    detector.deactivate()
