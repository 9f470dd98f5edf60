"""What to build and how, per TensorRT release: pure Python, no TensorRT needed, so that every choice
that depends on the TensorRT version is made (and tested) here and the builder only carries it out.

TensorRT 10 chooses layer precisions from builder flags (`BuilderFlag.FP16`, `INT8`, `FP8`); an INT8
or FP8 network is the calibrate stage's explicit Q/DQ ONNX (never an implicit calibrator). TensorRT
11 removed those flags and the calibrators: networks are strongly typed, so the ONNX's own types
decide (FP16 by casting the non-quantized parts of the ONNX to float16 before parsing). DLA exists
in 10.x (Xavier, Orin), is absent in 11.0-11.4.0 and back from 11.4.1 (AGX Orin, strongly typed).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ...errors import LeanEyeError, ParameterError

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
# The oldest GPU (compute capability) with fast arithmetic of each precision: FP8 tensor cores
# arrived with Ada (8.9) and Hopper (9.0); Orin (8.7) has none.
MIN_COMPUTE_CAPABILITY = {"fp32": (0, 0), "fp16": (5, 3), "int8": (6, 1), "fp8": (8, 9)}
# The manifest's precision field has no fp8 (it names the engine's arithmetic in leaneye's terms):
# an FP8 plan keeps FP32/FP16 layers beside the FP8 ones, so its manifest says "mixed".
MANIFEST_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "fp8": "mixed"}
MAX_WORKSPACE_MB = 1 << 20  # 1 TiB: anything larger is a typo


def version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


@dataclass(frozen=True)
class ReleaseLine:
    """TensorRT releases that build alike. `first`/`last` bound the versions (inclusive, `last` None =
    open); `fixtures` are the releases of ../shared/fixtures/tensorrt_api this line's API names are
    checked against (tests/runtime/test_tensorrt_api.py)."""

    name: str
    first: tuple[int, ...]
    last: tuple[int, ...] | None
    strongly_typed: bool
    precision_flags: dict  # precision -> names of `tensorrt.BuilderFlag` members to set
    dla: bool
    fixtures: tuple[str, ...]

    def covers(self, version: tuple[int, ...]) -> bool:
        def padded(v: tuple[int, ...]) -> tuple[int, ...]:
            return (v + (0, 0, 0, 0))[:4]

        version = padded(version)
        if version < padded(self.first):
            return False
        # `last` (11, 4, 0) covers every 11.4.0.x build.
        return self.last is None or version[: len(self.last)] <= self.last


NO_FLAGS = {precision: () for precision in PRECISIONS}
RELEASE_LINES = (
    ReleaseLine(
        "10.x",
        (10, 0),
        (10, 999),
        strongly_typed=False,
        # INT8 alone: the layers the calibrate stage left unquantized stay FP32, as it measured them.
        precision_flags={"fp32": (), "fp16": ("FP16",), "int8": ("INT8",), "fp8": ("FP8",)},
        dla=True,
        fixtures=("10.3.0", "10.16.1.11"),
    ),
    ReleaseLine(
        "11.0-11.4.0",
        (11, 0),
        (11, 4, 0),
        strongly_typed=True,
        precision_flags=NO_FLAGS,
        dla=False,
        fixtures=("11.4.0.106",),
    ),
    # No fixture holds 11.4.1 yet; 11.4.0 is the nearest release whose names are known.
    ReleaseLine(
        "11.4.1+", (11, 4, 1), None, strongly_typed=True, precision_flags=NO_FLAGS, dla=True, fixtures=("11.4.0.106",)
    ),
)
# Builder flags and other names every supported line uses (checked against every fixture).
DLA_FLAGS = ("GPU_FALLBACK",)
VERSION_COMPATIBLE_FLAGS = ("VERSION_COMPATIBLE",)


def release_line(tensorrt_version: str) -> ReleaseLine:
    version = version_tuple(tensorrt_version)
    for line in RELEASE_LINES:
        if line.covers(version):
            return line
    supported = ", ".join(line.name for line in RELEASE_LINES)
    raise LeanEyeError(f"TensorRT {tensorrt_version}: not supported; leaneye builds with TensorRT {supported}")


@dataclass(frozen=True)
class BuildOptions:
    """How a plan is built. `workspace_mb` 0 = TensorRT's default (all device memory); `dla_core` None =
    GPU only; `batch` (min, opt, max) = the optimization profile of a dynamic batch dimension (None:
    batch 1, the only one leaneye's detector runs); `version_compatible` = a plan that later TensorRT
    releases also run (at some speed cost)."""

    precision: str = "fp32"
    workspace_mb: int = 0
    dla_core: int | None = None
    batch: tuple[int, int, int] | None = None
    version_compatible: bool = False

    def __post_init__(self) -> None:
        """Each bad value is a ParameterError naming the field; callers name it as the user wrote it."""
        if self.precision not in PRECISIONS:
            raise ParameterError("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not _is_int(self.workspace_mb) or not 0 <= self.workspace_mb <= MAX_WORKSPACE_MB:
            raise ParameterError(
                "workspace_mb", f"expected 0 (TensorRT's default) to {MAX_WORKSPACE_MB} MB, got {self.workspace_mb!r}"
            )
        if self.dla_core is not None and (not _is_int(self.dla_core) or self.dla_core < 0):
            raise ParameterError("dla_core", f"expected none or a DLA core number >= 0, got {self.dla_core!r}")
        batch = self.batch
        if batch is not None:
            if not isinstance(batch, tuple) or len(batch) != 3 or not all(_is_int(b) and b >= 1 for b in batch):
                raise ParameterError("batch", f"expected MIN:OPT:MAX, 3 positive integers, got {batch!r}")
            if not batch[0] <= batch[1] <= batch[2]:
                raise ParameterError("batch", f"expected MIN <= OPT <= MAX, got {':'.join(map(str, batch))}")
        if not isinstance(self.version_compatible, bool):
            raise ParameterError("version_compatible", f"expected true or false, got {self.version_compatible!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["batch"] = None if self.batch is None else list(self.batch)
        return data

    @classmethod
    def from_mapping(cls, data, where: str, path: str) -> BuildOptions:
        """The JSON form (a manifest's target.tensorrt_build at `path`), a problem naming `path`.<key>."""
        fields = ", ".join(cls.__dataclass_fields__)
        if not isinstance(data, dict):
            raise LeanEyeError(f"{where}: field '{path}': expected an object with any of {fields}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise LeanEyeError(f"{where}: field '{path}.{unknown[0]}': unknown; expected only {fields}")
        values = dict(data)
        if isinstance(values.get("batch"), list):
            values["batch"] = tuple(values["batch"])
        try:
            return cls(**values)
        except ParameterError as exc:
            raise LeanEyeError(f"{where}: field '{path}.{exc.parameter}': {exc.problem}") from None


TENSOR_MODES = ("input", "output")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a plan as TensorRT reports it: `dtype` the name of its `DataType` member
    in lower case ("float", "half", "int32", ...), -1 in `shape` for a dimension set at run time."""

    name: str
    mode: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_mapping(cls, data, where: str, path: str) -> TensorSpec:
        expected = "an object with name, mode (input|output), dtype and shape (integers, -1 = set at run time)"
        ok = (
            isinstance(data, dict)
            and set(data) == {"name", "mode", "dtype", "shape"}
            and isinstance(data["name"], str)
            and data["name"]
            and data["mode"] in TENSOR_MODES
            and isinstance(data["dtype"], str)
            and data["dtype"]
            and isinstance(data["shape"], list)
            and all(_is_int(d) and d >= -1 for d in data["shape"])
        )
        if not ok:
            raise LeanEyeError(f"{where}: field '{path}': expected {expected}")
        return cls(data["name"], data["mode"], data["dtype"], tuple(data["shape"]))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BuildPlan:
    """The TensorRT settings one build uses, all names of TensorRT's API as strings."""

    release_line: str
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    cast_onnx_to_fp16: bool  # cast the ONNX's float parts to float16 before parsing (strongly typed FP16)
    builder_flags: tuple[str, ...]  # names of BuilderFlag members
    dla_core: int | None


def translate(options: BuildOptions, tensorrt_version: str, compute_capability: str) -> BuildPlan:
    """The settings for `options` on this TensorRT and GPU, or a one-line error for what they lack."""
    line = release_line(tensorrt_version)
    capability = version_tuple(compute_capability)
    needed = MIN_COMPUTE_CAPABILITY[options.precision]
    if capability < needed:
        raise LeanEyeError(
            f"--precision {options.precision}: this GPU (compute capability {compute_capability}) lacks it; "
            f"it needs compute capability {'.'.join(map(str, needed))} or newer"
        )
    flags = list(line.precision_flags[options.precision])
    if options.dla_core is not None:
        if not line.dla:
            raise LeanEyeError(
                f"--dla-core {options.dla_core}: TensorRT {tensorrt_version} has no DLA support "
                f"(absent in TensorRT 11.0-11.4.0; use TensorRT 10.x or 11.4.1+ on a Jetson AGX Orin)"
            )
        if options.precision not in ("fp16", "int8"):
            raise LeanEyeError(f"--dla-core {options.dla_core}: DLA runs fp16 or int8, not {options.precision}")
        flags.extend(DLA_FLAGS)
    if options.version_compatible:
        flags.extend(VERSION_COMPATIBLE_FLAGS)
    return BuildPlan(
        release_line=line.name,
        strongly_typed=line.strongly_typed,
        cast_onnx_to_fp16=line.strongly_typed and options.precision == "fp16",
        builder_flags=tuple(flags),
        dla_core=options.dla_core,
    )
