"""ONNX Runtime backend, CPU execution provider. onnxruntime is imported when an engine is loaded,
not when leaneye is. Which `target` fields it refuses: the manifest format, `leaneye.engine.manifest`.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import LeanEyeError, first_line
from .base import Backend, version_tuple

GPU_TARGET_FIELDS = ("tensorrt_version", "compute_capability", "device_name")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    devices = ("cpu",)
    honours_threads = True  # ONNX Runtime's intra-op threads; inter-op stays its default

    def _load(self, target) -> None:
        # Fail at configure time, not at activate, when the package is missing.
        if importlib.util.find_spec("onnxruntime") is None:
            raise LeanEyeError(
                f"{self.model_path}: backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)"
            )
        self.session = None
        self.run_options = None
        if target is None:
            return
        for key in GPU_TARGET_FIELDS:
            value = getattr(target, key)
            if value is not None:
                raise LeanEyeError(
                    f"{self.model_path}: the engine was built for {key.replace('_', ' ')} {value} "
                    f"(manifest field 'target.{key}'), but backend 'onnxruntime' runs on the CPU and has none"
                )
        if target.onnxruntime_version is not None:
            import onnxruntime

            if version_tuple(onnxruntime.__version__) < version_tuple(target.onnxruntime_version):
                raise LeanEyeError(
                    f"{self.model_path}: the engine was built for onnxruntime >= {target.onnxruntime_version} "
                    f"(manifest field 'target.onnxruntime_version'), but this machine has onnxruntime "
                    f"{onnxruntime.__version__}"
                )

    def _activate(self) -> None:
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = self.options.threads
        try:
            session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...)
            raise LeanEyeError(f"{self.model_path}: ONNX Runtime cannot load this model: {first_line(exc)}") from None
        inputs = {tensor.name: tensor for tensor in session.get_inputs()}
        if self.input_name not in inputs:
            raise LeanEyeError(
                f"{self.model_path}: manifest field 'input.name' is {self.input_name!r}, "
                f"but the model's inputs are {sorted(inputs)}"
            )
        model_shape = inputs[self.input_name].shape
        # Symbolic dimensions (strings or None) accept any size; fixed ones must match the manifest.
        if len(model_shape) != len(self.input_shape) or any(
            isinstance(dim, int) and dim != want for dim, want in zip(model_shape, self.input_shape)
        ):
            raise LeanEyeError(
                f"{self.model_path}: manifest field 'input.shape' is {list(self.input_shape)}, "
                f"but the model's input {self.input_name!r} has shape {model_shape}"
            )
        # A failing run is reported by _infer as one line; ORT would also log it, a second time, to stderr.
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4  # fatal only
        self.session = session

    def _infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        # session.run returns host arrays once the run is done: nothing left to synchronise.
        try:
            return self.session.run(None, {self.input_name: tensor}, self.run_options)
        except Exception as exc:  # a model that loads but fails inside (e.g. a reshape that wants another size)
            raise LeanEyeError(
                f"{self.model_path}: ONNX Runtime cannot run this model on its "
                f"{list(tensor.shape)} {tensor.dtype} input: {first_line(exc)}"
            ) from None

    def _deactivate(self) -> None:
        self.session = None
        self.run_options = None
