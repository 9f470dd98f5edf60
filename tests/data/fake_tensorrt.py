"""FAKE `tensorrt` module, for unit tests of the builder's logic only (TensorRT cannot be installed on
our machines). It builds nothing: its "plan" is a JSON description of what the builder asked for.
Its enums hold only the members whose names the real release's bindings list
(../shared/fixtures/tensorrt_api), so asking a release for a flag it lacks fails as it would there.
The ONNX parser reads the model with the real onnx package.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import onnx

ENUMS = {
    "BuilderFlag": ("FP16", "INT8", "FP8", "GPU_FALLBACK", "VERSION_COMPATIBLE"),
    "MemoryPoolType": ("WORKSPACE",),
    "DeviceType": ("GPU", "DLA"),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
    "TensorIOMode": ("INPUT", "OUTPUT"),
}
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64"}


class _Member(int):
    def __new__(cls, value: int, name: str):
        member = super().__new__(cls, value)
        member.name = name
        return member


def fake_tensorrt(version: str, names: set[str], dla_cores: int = 0) -> types.ModuleType:
    """A fake `tensorrt` of `version`, its enums cut down to `names` (the release's fixture)."""
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
                }
            ).encode()

    module.Logger, module.IProgressMonitor, module.OnnxParser, module.Builder = (
        Logger,
        IProgressMonitor,
        OnnxParser,
        Builder,
    )
    return module


def fixture_names(fixtures: Path, version: str) -> set[str]:
    return set((fixtures / "tensorrt_api" / f"tensorrt-{version}.txt").read_text().split())
