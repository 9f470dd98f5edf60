"""Pinned host and device buffers for a plan's inputs and outputs, and the one CUDA stream they move
on, through cuda-python's runtime API. Pinned host memory is what lets the copies run asynchronously
on the stream; one stream keeps copy in, inference and copy out in order without host waits. The
inference itself may be captured once as a CUDA graph and replayed per frame (`capture_graph`), which
spares TensorRT's per-enqueue host work: the pattern of TensorRT's developer guide ("CUDA Graphs")."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from .libraries import cuda_check


class StreamBuffers:
    """`tensors`: name -> (shape, numpy dtype). Allocates everything or, on a failure, nothing."""

    def __init__(self, cudart, tensors: dict[str, tuple[tuple[int, ...], np.dtype]]):
        self.cudart = cudart
        self.stream = None
        self._graph = self._graph_exec = None
        self._host_pointers: list[int] = []
        self._device_pointers: list[int] = []
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        try:
            self.stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cannot create a stream")
            for name, (shape, dtype) in tensors.items():
                nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
                host = cuda_check(cudart, cudart.cudaMallocHost(nbytes), f"cannot pin {nbytes} bytes for {name!r}")
                self._host_pointers.append(host)
                device = cuda_check(cudart, cudart.cudaMalloc(nbytes), f"cannot allocate {nbytes} bytes for {name!r}")
                self._device_pointers.append(device)
                raw = (ctypes.c_byte * nbytes).from_address(int(host))
                self._host[name] = np.frombuffer(raw, dtype, count=int(np.prod(shape))).reshape(shape)
                self._device[name] = int(device)
        except BaseException:
            self.free()
            raise

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def host(self, name: str) -> np.ndarray:
        """The pinned host array of tensor `name` (valid until `free`)."""
        return self._host[name]

    def host_arrays(self) -> dict[str, np.ndarray]:
        """Every tensor's pinned host array, by name."""
        return dict(self._host)

    def device(self, name: str) -> int:
        """The device address of tensor `name`, for `IExecutionContext.set_tensor_address`."""
        return self._device[name]

    def to_device(self, name: str) -> None:
        host = self._host[name]
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        result = self.cudart.cudaMemcpyAsync(self._device[name], host.ctypes.data, host.nbytes, kind, self.stream)
        cuda_check(self.cudart, result, f"copy of {name!r} to the device failed")

    def to_host(self, name: str) -> None:
        host = self._host[name]
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        result = self.cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes, kind, self.stream)
        cuda_check(self.cudart, result, f"copy of {name!r} to the host failed")

    def copy_within_device(self, name: str, address: int, into_tensor: bool) -> None:
        """Copy tensor `name` from (`into_tensor`) or to the device memory at `address`, on the stream:
        how pre/post-processing on the device hands frames to the plan and takes its outputs."""
        nbytes = self._host[name].nbytes
        source, destination = (address, self._device[name]) if into_tensor else (self._device[name], address)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        result = self.cudart.cudaMemcpyAsync(destination, source, nbytes, kind, self.stream)
        cuda_check(self.cudart, result, f"device copy of {name!r} failed")

    def on_host(self) -> bool:
        """Whether the "device" buffers are host memory (a machine whose CUDA runs on host memory, as
        the tests' fake does); CUDA's own answer for the first buffer."""
        pointer = next(iter(self._device.values()))
        attributes = cuda_check(self.cudart, self.cudart.cudaPointerGetAttributes(pointer), "cannot query a buffer")
        return attributes.type != self.cudart.cudaMemoryType.cudaMemoryTypeDevice

    def capture_graph(self, enqueue: Callable[[int], None]) -> None:
        """Capture what `enqueue(stream_handle)` puts on the stream as a CUDA graph, for `launch_graph`.
        The graph holds the buffers' addresses: it is freed with them."""
        cudart = self.cudart
        # Thread-local: other threads' CUDA calls (another node, PyTorch) may go on during the capture.
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart, cudart.cudaStreamBeginCapture(self.stream, mode), "cannot begin capturing the stream")
        try:
            enqueue(self.stream_handle)
        finally:
            # Ended whatever the enqueue did: a stream left capturing refuses all later work.
            error, graph = cudart.cudaStreamEndCapture(self.stream)
            self._graph = graph if error == cudart.cudaError_t.cudaSuccess else None
        cuda_check(cudart, (error,), "the stream capture failed")
        self._graph_exec = cuda_check(
            cudart, cudart.cudaGraphInstantiate(self._graph, 0), "cannot instantiate the graph"
        )

    def launch_graph(self) -> None:
        cuda_check(self.cudart, self.cudart.cudaGraphLaunch(self._graph_exec, self.stream), "the graph launch failed")

    def synchronize(self) -> None:
        cuda_check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "the stream failed")

    def free(self) -> None:
        """Free everything; safe to call twice. Errors while freeing are not raised: the memory is lost
        either way, and the caller is already leaving."""
        if self._graph_exec is not None:
            self.cudart.cudaGraphExecDestroy(self._graph_exec)
        if self._graph is not None:
            self.cudart.cudaGraphDestroy(self._graph)
        self._graph = self._graph_exec = None
        self._host.clear()
        self._device.clear()
        for pointer in self._device_pointers:
            self.cudart.cudaFree(pointer)
        for pointer in self._host_pointers:
            self.cudart.cudaFreeHost(pointer)
        self._device_pointers, self._host_pointers = [], []
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
