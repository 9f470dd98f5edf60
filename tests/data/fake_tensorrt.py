"""FAKE `tensorrt` module, for unit tests of the builder's logic and the backend's life cycle only
(TensorRT cannot be installed on our machines). It builds nothing: its "plan" is a JSON description of
what the builder asked for, carrying the parsed ONNX, which its runtime runs with the real ONNX Runtime
on the FAKE cudart's "device" memory and streams (tests/data/fake_cudart.py). Its enums hold only the
members whose names the real release's bindings list (../shared/fixtures/tensorrt_api), so asking a
release for a flag it lacks fails as it would there. The ONNX parser reads the model with the real
onnx package.
"""

from __future__ import annotations

import base64
import ctypes
import json
import types
from pathlib import Path

import numpy as np
import onnx

ENUMS = {
    "BuilderFlag": ("FP16", "INT8", "FP8", "GPU_FALLBACK", "VERSION_COMPATIBLE"),
    "MemoryPoolType": ("WORKSPACE",),
    "DeviceType": ("GPU", "DLA"),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
    "TensorIOMode": ("INPUT", "OUTPUT"),
}
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64"}
# ONNX Runtime's type names -> (TensorRT DataType member, NumPy dtype), for the fake runtime.
RUNTIME_TYPES = {"tensor(float)": ("FLOAT", np.float32), "tensor(float16)": ("HALF", np.float16)}


class _Member(int):
    def __new__(cls, value: int, name: str):
        member = super().__new__(cls, value)
        member.name = name
        return member


def fake_tensorrt(version: str, names: set[str], dla_cores: int = 0, cuda=None) -> types.ModuleType:
    """A fake `tensorrt` of `version`, its enums cut down to `names` (the release's fixture); its
    runtime runs plans on `cuda`, a FAKE cudart."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    for enum, members in ENUMS.items():
        kept = {m: _Member(i, m) for i, m in enumerate(members) if any(n.endswith(m) for n in names)}
        setattr(module, enum, types.SimpleNamespace(**kept))

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class IProgressMonitor:
        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, dtype, shape):
            self.name, self.dtype, self.shape = name, _Member(0, dtype), shape

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []
            self.num_inputs = self.num_outputs = 0

        def get_input(self, index):
            return self.inputs[index]

        def get_output(self, index):
            return self.outputs[index]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

        def node_name(self):
            return "Conv_0"

        def node_operator(self):
            return "Conv"

        def node(self):
            return 0

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

        def parse(self, data: bytes) -> bool:
            try:
                model = onnx.load_from_string(data)
            except Exception as exc:
                self.errors.append(ParserError(str(exc)))
                return False

            def tensors(values):
                return [
                    Tensor(
                        v.name,
                        ONNX_TYPES[v.type.tensor_type.elem_type],
                        tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim),
                    )
                    for v in values
                ]

            self.network.model = model
            self.network.inputs, self.network.outputs = tensors(model.graph.input), tensors(model.graph.output)
            self.network.num_inputs, self.network.num_outputs = len(self.network.inputs), len(self.network.outputs)
            return True

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timing"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles, self.cache = [], {}, [], None
            self.default_device_type, self.DLA_core, self.progress_monitor = None, -1, None

        def set_flag(self, flag):
            self.flags.append(flag.name)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool.name] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile.shapes)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return not cache.data.startswith(b"foreign")

        def get_timing_cache(self):
            return self.cache

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            config.progress_monitor.phase_start("Building engine", None, 1)
            config.progress_monitor.step_complete("Building engine", 0)
            config.progress_monitor.phase_finish("Building engine")
            float16 = any(
                init.data_type == onnx.TensorProto.FLOAT16 for init in network.model.graph.initializer
            ) or any(node.op_type == "Cast" for node in network.model.graph.node)
            return json.dumps(
                {
                    "network_flags": network.flags,
                    "builder_flags": config.flags,
                    "pools": config.pools,
                    "profiles": config.profiles,
                    "dla_core": config.DLA_core,
                    "device": None if config.default_device_type is None else config.default_device_type.name,
                    "onnx_has_float16": float16,
                    "onnx": base64.b64encode(network.model.SerializeToString()).decode(),
                }
            ).encode()

    def device_array(address: int, shape, dtype) -> np.ndarray:
        count = int(np.prod(shape))
        raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
        return np.frombuffer(raw, dtype, count).reshape(shape)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            declared = self.engine.declared[name]
            if len(shape) != len(declared) or any(isinstance(d, int) and d != s for d, s in zip(declared, shape)):
                return False  # outside the (fake) profile
            self.shapes[name] = tuple(shape)
            zeros = np.zeros(shape, self.engine.types[name][1])
            outputs = self.engine.session.run(self.engine.outputs, {name: zeros})
            self.shapes.update({n: out.shape for n, out in zip(self.engine.outputs, outputs)})
            return True

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            cuda.fake_enqueue(stream_handle, self._run)
            return True

        def _run(self):
            engine = self.engine
            feeds = {n: device_array(self.addresses[n], self.shapes[n], engine.types[n][1]) for n in engine.inputs}
            for name, out in zip(engine.outputs, engine.session.run(engine.outputs, feeds)):
                np.copyto(device_array(self.addresses[name], self.shapes[name], engine.types[name][1]), out)

    class Engine:
        def __init__(self, model_bytes: bytes):
            import onnxruntime

            self.session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
            inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
            self.inputs, self.outputs = [t.name for t in inputs], [t.name for t in outputs]
            self.declared = {t.name: t.shape for t in inputs}
            self.types = {t.name: RUNTIME_TYPES[t.type] for t in [*inputs, *outputs]}
            self.num_io_tensors = len(self.types)

        def get_tensor_name(self, index):
            return [*self.inputs, *self.outputs][index]

        def get_tensor_mode(self, name):
            return module.TensorIOMode.INPUT if name in self.inputs else module.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return _Member(0, self.types[name][0])

        def create_execution_context(self):
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan: bytes):
            try:
                return Engine(base64.b64decode(json.loads(plan)["onnx"]))
            except Exception:  # TensorRT logs why and returns None
                return None

    module.Logger, module.IProgressMonitor, module.OnnxParser, module.Builder, module.Runtime = (
        Logger,
        IProgressMonitor,
        OnnxParser,
        Builder,
        Runtime,
    )
    return module


def fixture_names(fixtures: Path, version: str) -> set[str]:
    return set((fixtures / "tensorrt_api" / f"tensorrt-{version}.txt").read_text().split())
