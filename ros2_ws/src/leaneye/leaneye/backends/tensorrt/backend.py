"""TensorRT backend: runs a plan (model.plan) built for this machine, or builds and caches one from
the engine's ONNX on first load (`cache`). Configure (`_load`) imports TensorRT and cuda-python and
refuses, before deserializing anything, a plan whose manifest target names another TensorRT or GPU;
activate deserializes it and allocates pinned host and device buffers and one stream; infer copies
in, runs `execute_async_v3` (or replays it as a CUDA graph: extra option `cuda_graph`), copies out and
synchronizes; deactivate frees it all.
"""

from __future__ import annotations

import numpy as np

from ...errors import LeanEyeError
from ..base import Backend
from ..registry import device_stages_factory
from .cache import cached_plan
from .cuda_memory import StreamBuffers
from .libraries import cuda_check, import_cudart, import_tensorrt, running_platform
from .options import BuildOptions
from .platform import REBUILD_HINT, check_plan_target

MAX_DEVICES = 16
# TensorRT DataType member names -> NumPy dtypes, for the host buffers.
NUMPY_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


class TensorRTBackend(Backend):
    name = "tensorrt"
    devices = tuple(f"cuda:{index}" for index in range(MAX_DEVICES))
    # cuda_graph: capture the inference once at activate and replay it per frame; device_pipeline:
    # pre/post-processing on the GPU where a provider is installed (docs/tensorrt.md).
    extra_options = frozenset({"cuda_graph", "device_pipeline"})

    def _load(self, target) -> None:
        for key in self.extra_options:
            value = self.options.extra.get(key)
            if value is not None and not isinstance(value, bool):
                raise LeanEyeError(f"backend 'tensorrt': extra option {key}: expected true or false, got {value!r}")
        self.cuda_graph = self.options.extra.get("cuda_graph", False)
        where = str(self.model_path)
        self.trt = import_tensorrt(where)
        self.cudart = import_cudart(where)
        self.device_index = int(self.device.split(":")[1])
        self.platform = running_platform(self.trt, self.cudart, self.device_index)
        self.build_options = None
        if self.model_path.suffix == ".onnx":
            self.build_options = target.tensorrt_build if target and target.tensorrt_build else BuildOptions()
            self.plan_path = cached_plan(self.trt, self.model_path, self.build_options, self.platform)
            self.version_compatible = self.build_options.version_compatible
        else:
            check_plan_target(self.model_path, target, self.platform)
            self.plan_path = self.model_path
            self.version_compatible = bool(target.tensorrt_build and target.tensorrt_build.version_compatible)
        self.runtime = self.engine = self.context = self.buffers = None
        self.output_names: list[str] = []

    def _deserialize(self):
        trt = self.trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        # A version-compatible plan carries its own lean runtime, which TensorRT runs only when allowed.
        self.runtime.engine_host_code_allowed = self.version_compatible
        return self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())

    def _activate(self) -> None:
        try:
            self._allocate()
        except BaseException:
            self._deactivate()
            raise

    def _allocate(self) -> None:
        trt = self.trt
        # The current device is per thread: activate may run on another thread than configure did.
        cuda_check(self.cudart, self.cudart.cudaSetDevice(self.device_index), f"cannot use device {self.device}")
        engine = self._deserialize()
        if engine is None and self.build_options is not None:  # a cached plan this TensorRT refuses: rebuild it
            self.plan_path = cached_plan(trt, self.model_path, self.build_options, self.platform, rebuild=True)
            engine = self._deserialize()
        if engine is None:
            raise LeanEyeError(f"{self.plan_path}: TensorRT cannot deserialize this plan (corrupt?); {REBUILD_HINT}")
        self.engine = engine
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        if inputs != [self.input_name]:
            raise LeanEyeError(
                f"{self.plan_path}: manifest field 'input.name' is {self.input_name!r}, but the plan's inputs are {inputs}"
            )
        self.context = engine.create_execution_context()
        if not self.context.set_input_shape(self.input_name, self.input_shape):
            raise LeanEyeError(
                f"{self.plan_path}: manifest field 'input.shape' {list(self.input_shape)} is outside the plan's "
                f"optimization profile for {self.input_name!r}"
            )
        tensors = {}
        for name in names:
            dtype_name = str(engine.get_tensor_dtype(name).name)
            if dtype_name not in NUMPY_DTYPES:
                raise LeanEyeError(
                    f"{self.plan_path}: tensor {name!r} has type {dtype_name}, which leaneye cannot read"
                )
            tensors[name] = (tuple(self.context.get_tensor_shape(name)), NUMPY_DTYPES[dtype_name])
        self.buffers = StreamBuffers(self.cudart, tensors)
        for name in names:
            self.context.set_tensor_address(name, self.buffers.device(name))
        self.output_names = [name for name in names if name != self.input_name]
        if self.cuda_graph:
            self._capture()

    def _capture(self) -> None:
        # TensorRT finishes its set-up for the input shape in the first enqueue; a graph must not replay that.
        self._enqueue(self.buffers.stream_handle)
        self.buffers.synchronize()
        try:
            self.buffers.capture_graph(self._enqueue)
        except LeanEyeError as exc:
            raise LeanEyeError(
                f"{self.plan_path}: extra option cuda_graph: this plan's inference cannot be captured as a CUDA "
                f"graph ({exc}); run it without cuda_graph"
            ) from None

    def _enqueue(self, stream_handle: int) -> None:
        if not self.context.execute_async_v3(stream_handle):
            raise LeanEyeError(f"{self.plan_path}: TensorRT failed to enqueue the inference (its log says why)")

    def _infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        if tuple(tensor.shape) != self.input_shape:
            raise LeanEyeError(
                f"{self.plan_path}: input of shape {list(tensor.shape)}, the engine takes {list(self.input_shape)}"
            )
        buffers = self.buffers
        np.copyto(buffers.host(self.input_name), tensor, casting="same_kind")
        buffers.to_device(self.input_name)
        if self.cuda_graph:
            buffers.launch_graph()
        else:
            self._enqueue(buffers.stream_handle)
        for name in self.output_names:
            buffers.to_host(name)
        buffers.synchronize()
        return [buffers.host(name).copy() for name in self.output_names]

    def device_pipeline(self, manifest, settings):
        """Pre/post-processing on this GPU by the installed provider of device stages (entry points of
        group `leaneye.device_stages`: leaneye_compress's, with PyTorch), or None: the CPU stages."""
        if not self.options.extra.get("device_pipeline", True):
            return None
        factory = device_stages_factory()
        return None if factory is None else factory(manifest, settings, self)

    # What device stages use, between activate and deactivate: the plan's tensors and its stream.

    def device_tensors(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every input and output tensor of the plan: name -> (shape, NumPy dtype)."""
        return {name: (array.shape, array.dtype) for name, array in self.buffers.host_arrays().items()}

    @property
    def stream_handle(self) -> int:
        return self.buffers.stream_handle

    def buffers_on_host(self) -> bool:
        return self.buffers.on_host()

    def infer_between(self, input_address: int, output_addresses: dict[str, int]) -> None:
        """Queue, on the plan's stream: the input from device memory at `input_address`, the inference,
        each output to its address in `output_addresses`. Nothing waits: `synchronize` does."""
        buffers = self.buffers
        buffers.copy_within_device(self.input_name, input_address, into_tensor=True)
        if self.cuda_graph:
            buffers.launch_graph()
        else:
            self._enqueue(buffers.stream_handle)
        for name in self.output_names:
            buffers.copy_within_device(name, output_addresses[name], into_tensor=False)

    def synchronize(self) -> None:
        self.buffers.synchronize()

    def _deactivate(self) -> None:
        # The context uses the buffers: it goes first (the CUDA graph goes with the buffers).
        self.context = None
        self.engine = None
        self.runtime = None
        if self.buffers is not None:
            self.buffers.free()
            self.buffers = None
        self.output_names = []
