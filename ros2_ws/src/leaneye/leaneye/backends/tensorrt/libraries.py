"""Importing TensorRT and cuda-python when an engine needs them, never at `import leaneye`, and asking
them which platform this is. A missing library is one line naming the package and how to install it.
"""

from __future__ import annotations

import importlib

from ...errors import LeanEyeError, first_line
from .platform import Platform

TENSORRT_INSTALL = (
    "the tensorrt Python package (TensorRT 10.x or 11.x): on a Jetson it comes with JetPack "
    "(sudo apt install python3-libnvinfer), on a desktop GPU: pip install tensorrt"
)
CUDA_INSTALL = "cuda-python's cuda.bindings (pip install 'cuda-bindings>=12.9,<13', or leaneye[tensorrt])"


def import_tensorrt(where: str):
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise LeanEyeError(f"{where}: TensorRT needs {TENSORRT_INSTALL} ({first_line(exc)})") from None


def import_cudart(where: str):
    """cuda-python's runtime API: NVIDIA's samples use it rather than pycuda, which needs a driver to
    build and keeps a CUDA context of its own beside the one TensorRT (and PyTorch) use."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError as exc:
        raise LeanEyeError(f"{where}: TensorRT's buffers need {CUDA_INSTALL} ({first_line(exc)})") from None


def cuda_check(cudart, result, what: str):
    """The value(s) of a cuda-python call, which returns (error, values...); a failure is one line
    naming the error as CUDA does (e.g. cudaErrorInsufficientDriver: no driver, or one too old)."""
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise LeanEyeError(f"CUDA {what}: {text.decode() if isinstance(text, bytes) else text} ({error.name})")
    return values[0] if len(values) == 1 else values


def running_platform(trt, cudart, device: int) -> Platform:
    """The TensorRT release and the GPU `device` as CUDA names it."""
    cuda_check(cudart, cudart.cudaSetDevice(device), f"cannot use device {device}")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), f"cannot read device {device}'s properties")
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return Platform(trt.__version__, name, f"{props.major}.{props.minor}")
