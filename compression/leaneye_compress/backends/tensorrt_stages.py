"""TorchPipeline around leaneye's TensorRT backend: the frame is letterboxed on the GPU, handed to the
plan by one device-to-device copy, and the plan's outputs are copied to torch tensors and decoded
there; only the kept boxes come to the host. Registered as the `torch` entry point of group
`leaneye.device_stages` (leaneye itself never imports torch). Everything runs on the plan's own CUDA
stream (torch works on it through `torch.cuda.ExternalStream`), so no stage waits for another.

The backend's buffers exist between activate and deactivate only, and a new activation brings new
ones: the stages bind to them at the first frame after each activation.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from leaneye.errors import LeanEyeError

from .torch_pipeline import TorchPipeline

TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}


def tensorrt_stages(manifest, settings, backend):
    """The entry point: the stages for `backend` (a leaneye TensorRTBackend)."""
    return TensorRTTorchStages(manifest, settings, backend)


class TensorRTTorchStages:
    """`leaneye.backends.base.DevicePipeline` for a TensorRT plan, with torch on the plan's stream."""

    def __init__(self, manifest, settings, backend):
        self.manifest = manifest
        self.settings = settings
        self.backend = backend
        self._bound_to = None  # the backend's buffers the fields below were made for
        self.pipeline = self.stream = None
        self.outputs: dict[str, torch.Tensor] = {}

    def _bind(self) -> None:
        backend = self.backend
        if self._bound_to is backend.buffers:
            return
        # Device memory is where torch must work; host memory (a fake CUDA in tests) means the CPU.
        device = torch.device("cpu") if backend.buffers_on_host() else torch.device(backend.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LeanEyeError(
                f"{backend.plan_path}: pre/post-processing on the GPU needs a CUDA build of torch (this is torch "
                f"{torch.__version__}); install one, or give backend option device_pipeline=false"
            )
        tensors = backend.device_tensors()
        _, input_dtype = tensors[backend.input_name]
        self.stream = torch.cuda.ExternalStream(backend.stream_handle, device=device) if device.type == "cuda" else None
        with self._on_stream():
            self.pipeline = TorchPipeline(self.manifest, self.settings, device, TORCH_DTYPES[input_dtype])
            self.outputs = {
                name: torch.empty(shape, dtype=TORCH_DTYPES[dtype], device=device)
                for name, (shape, dtype) in tensors.items()
                if name in backend.output_names
            }
        self._bound_to = backend.buffers

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def preprocess(self, frame: np.ndarray):
        self._bind()
        with self._on_stream():
            return self.pipeline.preprocess(frame)

    def infer(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.backend.infer_between(tensor.data_ptr(), {name: out.data_ptr() for name, out in self.outputs.items()})
        return [self.outputs[name] for name in self.backend.output_names]

    def postprocess(self, outputs, transform, image_size):
        with self._on_stream():
            return self.pipeline.postprocess(outputs, transform, image_size)

    def synchronize(self) -> None:
        self.backend.synchronize()

    def to_host(self, outputs) -> list[np.ndarray]:
        self.backend.synchronize()
        return [output.float().cpu().numpy() for output in outputs]
