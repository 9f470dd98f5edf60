"""Engine directories: a model file plus `manifest.json`, everything needed to run it on frames.

    my_engine/
        model.onnx        (or model.plan for TensorRT, ...)
        manifest.json

manifest.json (format_version 1):

    {
      "format_version": 1,
      "backend": "onnxruntime",             # a name in leaneye.backends.backend_names()
      "precision": "fp32",                  # fp32 | fp16 | int8 | mixed
      "model": "model.onnx",                # file inside the directory
      "model_sha256": "<64 hex digits>",
      "input": {
        "name": "images", "shape": [1, 3, 416, 416],   # N, C, H, W (H and W may differ, see below)
        "layout": "NCHW", "dtype": "float32",           # float32 | float16
        "color": "bgr",                                 # channel order the network expects: bgr | rgb
        "scale": 1.0, "mean": null, "std": null         # tensor = (pixel * scale - mean) / std
      },
      "letterbox": {"align": "top-left", "pad_value": 114},   # align: center | top-left
      "decoder": {"type": "yolox", "strides": [8, 16, 32]},  # type: a key of leaneye.vision.decoders.DECODERS
      "class_names": ["person", "bicycle", ...],
      "producer": {"tool": "leaneye-compress import", "versions": {"onnx": "1.23.2", ...}},
      "target": {"onnxruntime_version": "1.17"}            # optional, see leaneye.engine.target
    }

H and W are at most MAX_INPUT_SIDE each and H * W at most MAX_INPUT_PIXELS, checked before anything
is allocated for the input. The optional `target` block says what the engine was built for
(TensorRT version, GPU compute capability and name, minimum onnxruntime); the backend compares it
with what this machine has when the engine is loaded. The ONNX Runtime backend refuses a target
naming a TensorRT version or a GPU (a CPU engine carries none) and an onnxruntime_version above the
installed one. Manifests without the block stay valid.

`load_manifest` checks every field, the model's path (inside the directory) and its sha256
before any backend touches the model, so a wrong engine fails at once with a one-line error
naming the field.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..atomic import atomic_path
from ..backends.registry import backend_names
from ..errors import LeanEyeError
from .fields import Fields
from .target import Target, parse_target

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
INPUT_DTYPES = ("float32", "float16")
COLORS = ("bgr", "rgb")
ALIGNS = ("center", "top-left")
# Bounds on the network input, so that a hostile or mistyped shape fails as a one-line error instead
# of a multi-gigabyte allocation: 8192 covers any camera's side, 4096 x 4096 any detector's input.
MAX_INPUT_SIDE = 8192
MAX_INPUT_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, int, int, int]
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "bgr"
    scale: float = 1.0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.shape[2], self.shape[3]


@dataclass(frozen=True)
class Manifest:
    backend: str
    precision: str
    model: str
    model_sha256: str
    input: InputSpec
    letterbox_align: str
    letterbox_pad_value: int
    decoder: str
    decoder_params: dict
    class_names: tuple[str, ...]
    producer: dict = field(default_factory=dict)
    target: Target | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        spec = asdict(self.input)
        spec["shape"] = list(self.input.shape)
        for key in ("mean", "std"):
            spec[key] = None if spec[key] is None else list(spec[key])
        data = {
            "format_version": self.format_version,
            "backend": self.backend,
            "precision": self.precision,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "input": spec,
            "letterbox": {"align": self.letterbox_align, "pad_value": self.letterbox_pad_value},
            "decoder": {"type": self.decoder, **self.decoder_params},
            "class_names": list(self.class_names),
            "producer": self.producer,
        }
        if self.target is not None:
            data["target"] = self.target.to_dict()
        return data


def _model_file_name(fields: Fields, value: str) -> str:
    """The model's path must name a file inside the engine directory: no '..', not absolute."""
    expected = "a file name inside the engine directory (no '..', not absolute)"
    for pure in (PurePosixPath(value), PureWindowsPath(value)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            raise fields.fail("model", expected, value)
    if value in (".", MANIFEST_NAME):
        raise fields.fail("model", expected, value)
    return value


def parse_manifest(data, where: str = MANIFEST_NAME) -> Manifest:
    """Validate the JSON form of a manifest (everything but the model file itself)."""
    from ..vision.decoders import DECODERS

    fields = Fields(where)
    if not isinstance(data, dict):
        raise LeanEyeError(f"{where}: expected a JSON object")
    version = fields.get(data, "format_version", f"{FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise fields.fail(
            "format_version", f"{FORMAT_VERSION} (this leaneye reads format {FORMAT_VERSION} only)", version
        )
    backend = fields.choice(data, "backend", backend_names())
    precision = fields.choice(data, "precision", PRECISIONS)
    model = _model_file_name(fields, fields.string(data, "model", "the model's file name"))
    sha256 = fields.string(data, "model_sha256", "64 hexadecimal digits")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise fields.fail("model_sha256", "64 hexadecimal digits", sha256)

    spec = fields.obj(data, "input", "an object with name, shape, layout, dtype, color, scale")
    shape = fields.int_list(
        fields.get(spec, "input.shape", "[N, C, H, W]"), "input.shape", "[1, 3, H, W]: 4 positive integers", length=4
    )
    if shape[0] != 1 or shape[1] != 3:
        raise fields.fail("input.shape", "[1, 3, H, W] (batch 1, 3 colour channels)", list(shape))
    if max(shape[2:]) > MAX_INPUT_SIDE or shape[2] * shape[3] > MAX_INPUT_PIXELS:
        raise fields.fail(
            "input.shape",
            f"[1, 3, H, W] with H and W at most {MAX_INPUT_SIDE} and H * W at most {MAX_INPUT_PIXELS}",
            list(shape),
        )
    input_spec = InputSpec(
        name=fields.string(spec, "input.name", "the model's input tensor name"),
        shape=shape,
        layout=fields.choice(spec, "input.layout", ("NCHW",)),
        dtype=fields.choice(spec, "input.dtype", INPUT_DTYPES),
        color=fields.choice(spec, "input.color", COLORS),
        scale=fields.number(
            fields.get(spec, "input.scale", "a positive number"), "input.scale", "a positive number", positive=True
        ),
        mean=fields.triple(spec, "input.mean", positive=False),
        std=fields.triple(spec, "input.std", positive=True),
    )

    letterbox = fields.obj(data, "letterbox", "an object with align and pad_value")
    align = fields.choice(letterbox, "letterbox.align", ALIGNS)
    pad_value = fields.get(letterbox, "letterbox.pad_value", "an integer 0-255")
    if not isinstance(pad_value, int) or isinstance(pad_value, bool) or not 0 <= pad_value <= 255:
        raise fields.fail("letterbox.pad_value", "an integer 0-255", pad_value)

    decoder_data = fields.obj(data, "decoder", "an object with type and the decoder's parameters")
    decoder = fields.choice(decoder_data, "decoder.type", sorted(DECODERS))
    decoder_params = {k: v for k, v in decoder_data.items() if k != "type"}
    allowed = DECODERS[decoder].param_names
    for key in decoder_params:
        if key not in allowed:
            raise fields.fail(
                f"decoder.{key}", f"only {sorted(allowed) or 'no parameters'} for decoder {decoder!r}", key
            )
    if "strides" in decoder_params:
        decoder_params["strides"] = list(
            fields.int_list(decoder_params["strides"], "decoder.strides", "a list of positive integers")
        )

    names = fields.get(data, "class_names", "a non-empty list of class names")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise fields.fail("class_names", "a non-empty list of distinct non-empty strings", names)
    producer = data.get("producer", {})
    if not isinstance(producer, dict):
        raise fields.fail("producer", "an object (tool, versions)", producer)
    return Manifest(
        backend=backend,
        precision=precision,
        model=model,
        model_sha256=sha256.lower(),
        input=input_spec,
        letterbox_align=align,
        letterbox_pad_value=pad_value,
        decoder=decoder,
        decoder_params=decoder_params,
        class_names=tuple(names),
        producer=producer,
        target=parse_target(data, fields),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(engine_dir: Path | str) -> Manifest:
    """Read and check `engine_dir/manifest.json` and the model file it names (path and sha256)."""
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST_NAME
    if not path.is_file():
        raise LeanEyeError(f"{engine_dir}: not an engine directory; expected {MANIFEST_NAME} in it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeanEyeError(f"{path}: expected JSON ({exc})") from None
    manifest = parse_manifest(data, str(path))
    model_path = model_file(engine_dir, manifest)
    if not model_path.is_file():
        raise LeanEyeError(f"{path}: field 'model': expected an existing file, {model_path} is missing")
    actual = file_sha256(model_path)
    if actual != manifest.model_sha256:
        raise LeanEyeError(
            f"{path}: field 'model_sha256': {model_path.name} has sha256 {actual}, expected "
            f"{manifest.model_sha256} (model file changed or corrupt)"
        )
    return manifest


def model_file(engine_dir: Path | str, manifest: Manifest) -> Path:
    engine_dir = Path(engine_dir).resolve()
    path = (engine_dir / manifest.model).resolve()
    # A symlink pointing out of the directory is refused like '..'.
    if engine_dir not in path.parents:
        raise LeanEyeError(
            f"{engine_dir / MANIFEST_NAME}: field 'model': expected a file inside the engine directory, "
            f"{manifest.model} resolves to {path}"
        )
    return path


def write_engine(engine_dir: Path | str, model: bytes | Path | str, manifest: dict, force: bool = False) -> Manifest:
    """Write the model (bytes or a file to copy) and its manifest atomically; returns the checked manifest.

    `manifest` is the JSON form; its model_sha256 is computed here from the model itself.
    """
    data = dict(manifest)
    if isinstance(model, (bytes, bytearray)):
        data["model_sha256"] = hashlib.sha256(model).hexdigest()
    else:
        model = Path(model)
        if not model.is_file():
            raise LeanEyeError(f"{model}: expected a model file")
        data["model_sha256"] = file_sha256(model)
    checked = parse_manifest(data, f"{engine_dir}/{MANIFEST_NAME}")
    with atomic_path(engine_dir, force=force, is_dir=True) as tmp:
        target = tmp / checked.model
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(model, (bytes, bytearray)):
            target.write_bytes(model)
        else:
            shutil.copyfile(model, target)
        (tmp / MANIFEST_NAME).write_text(json.dumps(checked.to_dict(), indent=2) + "\n", encoding="utf-8")
    return checked


def tool_versions(*distributions: str) -> dict:
    """Installed versions of the named distributions, for a manifest's producer field."""
    from importlib import metadata

    versions = {}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
