"""PyTorch backend, for GPUs without TensorRT (and what runs on a lent GPU machine): an engine whose
manifest says `"backend": "pytorch"` and whose model is a LeanDet checkpoint (`model.pt`, read with
`weights_only=True`). Registered as the `pytorch` entry point of group `leaneye.backends` by this
distribution, so that `leaneye` itself never imports torch.

Extra options (`BackendOptions.extra`), each defaulting to what suits the device:

- `fp16` (default: on for CUDA, off for the CPU): weights and input in half precision.
- `cuda_graph` (default: on for CUDA; CUDA only): the steady state is captured once at activate
  and replayed per frame, so a frame costs one graph launch instead of one launch per kernel.
- `compile` (default off): `torch.compile` the network first (minutes of compilation at activate).
- `device_pipeline` (default: on for CUDA): letterbox + normalisation and decode + NMS on the device
  too (`torch_pipeline.TorchPipeline`); off, the Detector's CPU pre/post-processing runs around it.

Life cycle: configure reads and checks the checkpoint (no device memory), activate builds the
module on the device (and captures the graph), deactivate drops it all. Docs: docs/pytorch-backend.md.
"""

from __future__ import annotations

import numpy as np
import torch

from leaneye.backends import Backend
from leaneye.errors import LeanEyeError, first_line

from ..checkpoint import build_model, read_checkpoint
from ..models.detector import DecodedOutputs
from .torch_pipeline import TorchPipeline

MAX_DEVICES = 16
BOOLEAN_OPTIONS = ("fp16", "cuda_graph", "compile", "device_pipeline")
CUDA_ONLY_OPTIONS = ("fp16", "cuda_graph")
# Warm-up runs before capture: cuDNN picks its algorithms and the caching allocator settles.
WARMUP_RUNS = 3


class PyTorchBackend(Backend):
    name = "pytorch"
    devices = ("cpu", "cuda", *(f"cuda:{index}" for index in range(MAX_DEVICES)))
    extra_options = frozenset(BOOLEAN_OPTIONS)

    def _load(self, target) -> None:
        super()._load(target)  # checks no target: a checkpoint runs on any device
        self.torch_device = torch.device(self.device)
        on_cuda = self.torch_device.type == "cuda"
        extra = self.options.extra
        for key in BOOLEAN_OPTIONS:
            if key in extra and not isinstance(extra[key], bool):
                raise LeanEyeError(f"backend 'pytorch': extra option {key!r} expects true or false, got {extra[key]!r}")
        self.fp16 = extra.get("fp16", on_cuda)
        self.cuda_graph = extra.get("cuda_graph", on_cuda)
        self.compile = extra.get("compile", False)
        self.use_device_pipeline = extra.get("device_pipeline", on_cuda)
        if not on_cuda:
            for key in CUDA_ONLY_OPTIONS:
                if getattr(self, key):
                    raise LeanEyeError(
                        f"backend 'pytorch': extra option {key!r} needs a CUDA device, got {self.device}"
                    )
        if on_cuda and not torch.cuda.is_available():
            raise LeanEyeError(
                f"{self.model_path}: backend 'pytorch' on {self.device}, but this torch {torch.__version__} "
                f"sees no CUDA device (CPU-only build, or no driver); use device cpu"
            )
        self.checkpoint = read_checkpoint(self.model_path)
        self.model = None
        self.graph = self.static_input = self.static_outputs = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.float32

    def _activate(self) -> None:
        try:
            self._build()
        except BaseException:
            self._deactivate()
            raise

    def _build(self) -> None:
        model = DecodedOutputs(build_model(self.model_path, self.checkpoint)).eval()
        model = model.to(self.torch_device, self.dtype)
        if self.compile:
            try:
                model = torch.compile(model, mode="max-autotune-no-cudagraphs" if self.cuda_graph else "default")
            except Exception as exc:  # whatever the compiler stack raises
                raise LeanEyeError(f"{self.model_path}: torch.compile failed: {first_line(exc)}") from None
        self.model = model
        if self.cuda_graph:
            self._capture()

    def _capture(self) -> None:
        """Record one forward pass on a static input as a CUDA graph (warm-up on a side stream first,
        as torch.cuda.graphs asks); `infer_on_device` then copies into the static input and replays."""
        self.static_input = torch.zeros(self.input_shape, device=self.torch_device, dtype=self.dtype)
        side = torch.cuda.Stream(self.torch_device)
        side.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.model(self.static_input)
        torch.cuda.current_stream(self.torch_device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_outputs = [self.model(self.static_input)]

    def infer_on_device(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The outputs as device tensors, work queued (not synchronised): the device pipeline's inference."""
        if tuple(tensor.shape) != self.input_shape:
            raise LeanEyeError(
                f"{self.model_path}: input of shape {list(tensor.shape)}, the engine takes {list(self.input_shape)}"
            )
        if self.graph is not None:
            self.static_input.copy_(tensor)
            self.graph.replay()
            return self.static_outputs
        with torch.no_grad():
            return [self.model(tensor.to(self.torch_device, self.dtype))]

    def _infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        outputs = self.infer_on_device(torch.from_numpy(np.ascontiguousarray(tensor)).to(self.torch_device))
        return [output.float().cpu().numpy() for output in outputs]

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def device_pipeline(self, manifest, settings):
        if not self.use_device_pipeline:
            return None
        return TorchDeviceStages(self, TorchPipeline(manifest, settings, self.torch_device, self.dtype))

    def _deactivate(self) -> None:
        self.graph = self.static_input = self.static_outputs = None
        self.model = None
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


class TorchDeviceStages:
    """The Detector's three stages on the backend's device (`leaneye.backends.base.DevicePipeline`)."""

    def __init__(self, backend: PyTorchBackend, pipeline: TorchPipeline):
        self.backend = backend
        self.pipeline = pipeline

    def preprocess(self, frame: np.ndarray):
        return self.pipeline.preprocess(frame)

    def infer(self, tensor):
        return self.backend.infer_on_device(tensor)

    def postprocess(self, outputs, transform, image_size):
        return self.pipeline.postprocess(outputs, transform, image_size)

    def synchronize(self) -> None:
        self.backend.synchronize()

    def to_host(self, outputs) -> list[np.ndarray]:
        return [output.float().cpu().numpy() for output in outputs]
