"""FAKE `cuda.bindings.runtime` (cuda-python's CUDA runtime API), for tests of the TensorRT backend's
life cycle where there is no GPU. "Device" memory is host memory; a stream runs its work at once
unless it is being captured, and a graph replays what was captured. Its public names are the real
module's (tests/runtime/test_tensorrt_api.py checks), plus `fake_*`: `fake_enqueue` puts the FAKE
tensorrt's inference on a stream, `fake_live` is what is allocated, `fake_calls` counts the calls.
"""

from __future__ import annotations

import collections
import ctypes
import enum
import types


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaMemoryType(enum.IntEnum):
    cudaMemoryTypeHost = 1
    cudaMemoryTypeDevice = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


ERROR_TEXT = {
    cudaError_t.cudaSuccess: b"no error",
    cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    cudaError_t.cudaErrorInvalidDevice: b"invalid device ordinal",
}


class _Handle:
    """A stream, graph or executable graph: an object whose int() is its handle, as the real ones."""

    def __init__(self, work=None):
        self.work, self.captured = work, None

    def __int__(self) -> int:
        return id(self)


def fake_cudart(device_name: str = "NVIDIA H200", capability: tuple[int, int] = (9, 0), allocations=None):
    """A fake runtime with one GPU; `allocations` = how many cudaMalloc/cudaMallocHost succeed (None: all)."""
    module = types.ModuleType("cuda.bindings.runtime")
    live: dict[int, tuple[str, object]] = {}  # handle or address -> (kind, the object kept alive)
    calls: collections.Counter = collections.Counter()
    budget = [allocations]

    def ok(*values):
        return (cudaError_t.cudaSuccess, *values)

    def keep(kind: str, thing, handle: int):
        live[handle] = (kind, thing)
        return ok(thing)

    def release(kind: str, handle) -> tuple:
        assert live.pop(int(handle))[0] == kind, f"freed a {kind} that is not one"
        return ok()

    def allocate(kind: str, nbytes: int):
        if budget[0] is not None:
            if budget[0] == 0:
                return (cudaError_t.cudaErrorMemoryAllocation, None)
            budget[0] -= 1
        buffer = ctypes.create_string_buffer(nbytes)
        live[ctypes.addressof(buffer)] = (kind, buffer)
        return ok(ctypes.addressof(buffer))

    def enqueue(stream: _Handle, work) -> None:
        if stream.captured is not None:
            stream.captured.append(work)
        else:
            work()

    def end_capture(stream):
        graph = _Handle(stream.captured)
        stream.captured = None
        return keep("graph", graph, int(graph))

    def instantiate(graph, flags):
        executable = _Handle(list(graph.work))
        return keep("graph_exec", executable, int(executable))

    def launch(executable, stream):
        for work in executable.work:
            enqueue(stream, work)
        return ok()

    def begin_capture(stream, mode):
        stream.captured = []
        return ok()

    def memcpy(destination, source, count, kind, stream):
        enqueue(stream, lambda: ctypes.memmove(int(destination), int(source), count))
        return ok()

    def new_stream():
        stream = _Handle()
        return keep("stream", stream, int(stream))

    def properties(device):
        name = device_name.encode() + b"\0" * (256 - len(device_name))
        return ok(types.SimpleNamespace(name=name, major=capability[0], minor=capability[1]))

    api = {
        "cudaSetDevice": lambda device: ok() if device == 0 else (cudaError_t.cudaErrorInvalidDevice,),
        "cudaGetDeviceProperties": properties,
        "cudaGetErrorString": lambda error: ok(ERROR_TEXT[error]),
        "cudaStreamCreate": new_stream,
        "cudaStreamSynchronize": lambda stream: ok(),  # its work has run
        "cudaStreamDestroy": lambda stream: release("stream", stream),
        "cudaMallocHost": lambda nbytes: allocate("host", nbytes),
        "cudaFreeHost": lambda pointer: release("host", pointer),
        "cudaMalloc": lambda nbytes: allocate("device", nbytes),
        "cudaFree": lambda pointer: release("device", pointer),
        "cudaMemcpyAsync": memcpy,
        # Its "device" memory is host memory, and it says so.
        "cudaPointerGetAttributes": lambda pointer: ok(types.SimpleNamespace(type=cudaMemoryType.cudaMemoryTypeHost)),
        "cudaStreamBeginCapture": begin_capture,
        "cudaStreamEndCapture": end_capture,
        "cudaGraphInstantiate": instantiate,
        "cudaGraphLaunch": launch,
        "cudaGraphDestroy": lambda graph: release("graph", graph),
        "cudaGraphExecDestroy": lambda executable: release("graph_exec", executable),
    }

    def counted(name, function):
        def call(*args):
            calls[name] += 1
            return function(*args)

        return call

    for name, function in api.items():
        setattr(module, name, counted(name, function))
    module.cudaError_t, module.cudaMemcpyKind, module.cudaStreamCaptureMode, module.cudaMemoryType = (
        cudaError_t,
        cudaMemcpyKind,
        cudaStreamCaptureMode,
        cudaMemoryType,
    )

    def fake_enqueue(stream_handle: int, work) -> None:
        kind, stream = live[stream_handle]
        assert kind == "stream", f"{stream_handle} is no stream"
        enqueue(stream, work)

    module.fake_enqueue, module.fake_live, module.fake_calls = fake_enqueue, live, calls
    return module
