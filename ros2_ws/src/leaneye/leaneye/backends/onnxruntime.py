"""ONNX Runtime backend, CPU execution provider. onnxruntime is imported when an engine is loaded,
not when leaneye is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import LeanEyeError, first_line
from .base import Backend, BackendOptions


class OnnxRuntimeBackend(Backend):
    def __init__(self, model_path: Path, input_name: str, input_shape: tuple[int, ...], options: BackendOptions):
        self.model_path = model_path
        self.input_name = input_name
        self.input_shape = tuple(input_shape)
        self.options = options
        self.session = None
        self.run_options = None

    @property
    def active(self) -> bool:
        return self.session is not None

    def activate(self) -> None:
        if self.session is not None:
            return
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = self.options.intra_op_num_threads
        session_options.inter_op_num_threads = self.options.inter_op_num_threads
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
        # A failing run is reported by infer() as one line; ORT would also log it, a second time, to stderr.
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4  # fatal only
        self.session = session

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        if self.session is None:
            raise RuntimeError("OnnxRuntimeBackend.infer before activate()")
        try:
            return self.session.run(None, {self.input_name: tensor}, self.run_options)
        except Exception as exc:  # a model that loads but fails inside (e.g. a reshape that wants another size)
            raise LeanEyeError(
                f"{self.model_path}: ONNX Runtime cannot run this model on its "
                f"{list(tensor.shape)} {tensor.dtype} input: {first_line(exc)}"
            ) from None

    def deactivate(self) -> None:
        self.session = None
        self.run_options = None


def load(engine_dir: Path, manifest, options: BackendOptions) -> OnnxRuntimeBackend:
    from ..engine import model_file

    # Fail at configure time, not at activate, when the package is missing.
    if importlib.util.find_spec("onnxruntime") is None:
        raise LeanEyeError(
            f"{engine_dir}: backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)"
        )
    return OnnxRuntimeBackend(model_file(engine_dir, manifest), manifest.input.name, manifest.input.shape, options)
