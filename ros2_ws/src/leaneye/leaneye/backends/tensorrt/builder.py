"""Building a TensorRT plan from an ONNX, on the machine that will run it: what to set comes from
`options.translate` (the one place that knows TensorRT releases apart); this module only carries it
out through TensorRT's Python API. Used by `leaneye-compress engine` and by the TensorRT backend's
build-on-target cache; needs no PyTorch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import LeanEyeError, first_line
from .options import BuildOptions, TensorSpec, translate
from .platform import Platform

LOG = logging.getLogger("leaneye.tensorrt")
# Q/DQ stay float32 when the non-quantized rest is cast to float16: their scales are the calibration's.
FP16_CAST_KEEPS = ["QuantizeLinear", "DequantizeLinear"]


@dataclass(frozen=True)
class BuiltPlan:
    plan: bytes
    tensors: tuple[TensorSpec, ...]
    timing_cache: bytes


def fp16_onnx(onnx: bytes, where: str) -> bytes:
    """The ONNX with its float computation cast to float16 and float32 inputs and outputs kept, for a
    strongly typed network (TensorRT 11), whose precision is the ONNX's own types."""
    try:
        import onnx as onnx_module
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as exc:
        raise LeanEyeError(
            f"{where}: FP16 on TensorRT 11 casts the ONNX to float16, which needs onnx and onnxruntime "
            f"(pip install onnx onnxruntime): {first_line(exc)}"
        ) from None
    model = onnx_module.load_from_string(onnx)
    cast = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_CAST_KEEPS])
    return cast.SerializeToString()


def _progress_monitor(trt, log: Callable[[str], None]):
    """A TensorRT progress monitor that logs the start and end of the builder's top-level phases."""

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                log(f"TensorRT build: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            return None

    return BuildProgress()


def _parse_error(parser, where: str) -> LeanEyeError:
    """TensorRT's parser errors condensed to one line naming the first failing node."""
    error = parser.get_error(0)
    node = error.node_name() or f"#{error.node()}"
    more = f" (and {parser.num_errors - 1} more errors)" if parser.num_errors > 1 else ""
    return LeanEyeError(
        f"{where}: TensorRT's ONNX parser rejects node {node} ({error.node_operator()}): {error.desc()}{more}"
    )


def _profile_shapes(name: str, shape: tuple[int, ...], batch, where: str):
    """(min, opt, max) shapes of a network input: only a dynamic batch (first) dimension is chosen here."""
    if any(dim < 0 for dim in shape[1:]):
        raise LeanEyeError(
            f"{where}: input {name!r} has shape {list(shape)} with dynamic dimensions besides the batch; "
            f"fix them first (leaneye-compress import --input-size H W)"
        )
    if shape and shape[0] >= 0:
        if batch is not None and batch != (shape[0],) * 3:
            raise LeanEyeError(
                f"--batch {':'.join(map(str, batch))}: input {name!r} of {where} has a fixed batch of {shape[0]}"
            )
        return None
    low, opt, high = batch or (1, 1, 1)
    rest = tuple(shape[1:])
    return (low, *rest), (opt, *rest), (high, *rest)


def dtype_name(data_type) -> str:
    """A TensorRT DataType member as the manifest writes it ("float", "half", "int8", ...)."""
    return str(data_type.name).lower()


def _tensors(network) -> tuple[TensorSpec, ...]:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return tuple(
        TensorSpec(tensor.name, mode, dtype_name(tensor.dtype), tuple(tensor.shape))
        for mode, tensors in (("input", inputs), ("output", outputs))
        for tensor in tensors
    )


def build_plan(
    trt,
    onnx: bytes,
    options: BuildOptions,
    platform: Platform,
    where: str,
    timing_cache: bytes = b"",
    log: Callable[[str], None] = LOG.info,
) -> BuiltPlan:
    """Build the plan of `onnx` (bytes) for `platform` with `options`; `timing_cache` (serialized, may
    be empty) speeds the build up and comes back extended. `where` names the ONNX in errors."""
    settings = translate(options, platform.tensorrt_version, platform.compute_capability)
    if settings.cast_onnx_to_fp16:
        onnx = fp16_onnx(onnx, where)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        raise _parse_error(parser, where)

    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    for flag in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.dla_core is not None:
        cores = builder.num_DLA_cores
        if settings.dla_core >= cores:
            has = f"{cores} DLA cores" if cores else "no DLA"
            raise LeanEyeError(f"--dla-core {settings.dla_core}: this machine ({platform.device_name}) has {has}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core

    profile = builder.create_optimization_profile()
    dynamic = False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shapes = _profile_shapes(tensor.name, tuple(tensor.shape), options.batch, where)
        if shapes is not None:
            profile.set_shape(tensor.name, *shapes)
            dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)

    cache = config.create_timing_cache(timing_cache)
    # ignore_mismatch False: a cache made by another TensorRT or GPU is refused, not half-used.
    if cache is None or not config.set_timing_cache(cache, False):
        raise LeanEyeError(f"{where}: the timing cache is corrupt or from another TensorRT or GPU; delete it")
    monitor = _progress_monitor(trt, log)
    config.progress_monitor = monitor
    log(f"TensorRT {platform.tensorrt_version} on {platform.device_name}: building {where} ({settings.release_line})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LeanEyeError(f"{where}: TensorRT could not build a plan with {options.to_dict()} (its log says why)")
    return BuiltPlan(bytes(serialized), _tensors(network), bytes(config.get_timing_cache().serialize()))
