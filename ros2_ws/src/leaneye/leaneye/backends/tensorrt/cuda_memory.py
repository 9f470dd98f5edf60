"""Pinned host and device buffers for a plan's inputs and outputs, and the one CUDA stream they move
on, through cuda-python's runtime API. Pinned host memory is what lets the copies run asynchronously
on the stream; one stream keeps copy in, inference and copy out in order without host waits."""

from __future__ import annotations

import ctypes

import numpy as np

from .libraries import cuda_check


class StreamBuffers:
    """`tensors`: name -> (shape, numpy dtype). Allocates everything or, on a failure, nothing."""

    def __init__(self, cudart, tensors: dict[str, tuple[tuple[int, ...], np.dtype]]):
        self.cudart = cudart
        self.stream = None
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

    def synchronize(self) -> None:
        cuda_check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "the stream failed")

    def free(self) -> None:
        """Free everything; safe to call twice. Errors while freeing are not raised: the memory is lost
        either way, and the caller is already leaving."""
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
