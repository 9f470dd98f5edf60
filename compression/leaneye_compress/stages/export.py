"""Export a LeanDet checkpoint to an engine directory: one self-contained ONNX file + manifest.json.

The ONNX file holds its weights inside (torch's exporter would otherwise write a separate
`.onnx.data` file), uses opset 17, and outputs the decoded tensor described in
`leaneye_compress.models.detector` ("builtin" decoder). Its input follows LeanDet's input
contract (`leaneye_compress.models.contract`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import warnings
from pathlib import Path

import numpy as np
import torch

from leaneye.engine import Manifest, file_sha256, tool_versions, write_engine
from leaneye.errors import LeanEyeError

from ..checkpoint import checkpoint_bytes, load_model, model_payload
from ..models import contract
from ..models.detector import DecodedOutputs, LeanDet

OPSET = 17
# The model file of an engine directory, per backend that runs LeanDet exports.
MODEL_FILES = {"onnxruntime": "model.onnx", "pytorch": "model.pt"}
OUTPUT_NAME = "output"
MAX_DIFFERENCE = 1e-3

# What torch's ONNX exporter logs on every export of a LeanDet, none of it actionable here: the
# opset it converts from, the torchvision ops it skips, and the converter it falls back to.
EXPORTER_NOISE = {
    "torch.onnx._internal.exporter._compat": "Setting ONNX exporter to use operator set version",
    "torch.onnx._internal.exporter._registration": "torchvision is not installed",
    "onnxscript.version_converter": "The model version conversion is not supported",
}


def builtin_manifest(
    model: LeanDet,
    class_names,
    model_sha256: str = "",
    precision: str = "fp32",
    record: dict | None = None,
    backend: str = "onnxruntime",
) -> Manifest:
    """How a runtime feeds and decodes this model (the sha is filled in when the file is written).

    `record` (what the export stage did) goes into the manifest's producer field; `backend` is
    "onnxruntime" (model.onnx) or "pytorch" (model.pt, the checkpoint itself).
    """
    c = model.config
    return Manifest(
        backend=backend,
        precision=precision,
        model=MODEL_FILES[backend],
        model_sha256=model_sha256,
        input=contract.input_spec((c.input_height, c.input_width)),
        letterbox_align=contract.LETTERBOX_ALIGN,
        letterbox_pad_value=contract.PAD_VALUE,
        decoder="builtin",
        decoder_params={},
        class_names=tuple(class_names),
        producer={
            "tool": "leaneye-compress export",
            "versions": tool_versions("leaneye-compress", "torch", "onnx"),
            **(record or {}),
        },
    )


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_exporter():
    """Drop the exporter's known noise (EXPORTER_NOISE, one FutureWarning); anything else still shows."""
    filters = [(logging.getLogger(name), _DropMessage(prefix)) for name, prefix in EXPORTER_NOISE.items()]
    for logger, noise in filters:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            yield
    finally:
        for logger, noise in filters:
            logger.removeFilter(noise)


@contextlib.contextmanager
def interruptible():
    """Ctrl-C always surfaces as KeyboardInterrupt.

    torch.export runs user code under its own exception handling; an interrupt landing there can
    come back wrapped in (or replaced by) other exceptions. Whatever is raised after a SIGINT
    arrived is therefore turned back into the one KeyboardInterrupt the CLI reports as such.
    """
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        yield
        return
    try:
        yield
    except BaseException:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:  # caught and swallowed on the way out
        raise KeyboardInterrupt


def onnx_bytes(model: LeanDet) -> bytes:
    """The model as one ONNX protobuf with weights embedded, decoded output, batch 1."""
    import onnx

    c = model.config
    dummy = torch.zeros(1, 3, c.input_height, c.input_width)
    with interruptible(), quiet_exporter():
        program = torch.onnx.export(
            DecodedOutputs(model).eval(),
            (dummy,),
            input_names=[contract.INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    return buffer.getvalue()


def _check_finite_weights(checkpoint: Path, model: LeanDet) -> None:
    # NaN compares false with everything, so the PyTorch-vs-ONNX check below would pass NaN weights.
    for name, tensor in model.state_dict().items():
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise LeanEyeError(f"{checkpoint}: weight {name!r} holds NaN or infinite values; refusing to export it")


def export_pytorch_engine(checkpoint: Path, out: Path, force: bool = False) -> dict:
    """Checkpoint → engine directory for the PyTorch backend: the model's weights alone (no training
    state) as model.pt, and the manifest the ONNX export would have, with `"backend": "pytorch"`."""
    model, meta = load_model(checkpoint)
    _check_finite_weights(checkpoint, model)
    data = checkpoint_bytes(model_payload(model, meta["class_names"]))
    record = {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(Path(checkpoint))}
    manifest = builtin_manifest(model, meta["class_names"], record=record, backend="pytorch")
    written = write_engine(out, data, manifest.to_dict(), force=force)
    return {**record, "engine": str(out), "model_bytes": len(data), "model_sha256": written.model_sha256}


def export_engine(checkpoint: Path, out: Path, force: bool = False) -> dict:
    """Checkpoint → engine directory; returns what the stage did, also recorded in the manifest's producer field."""
    model, meta = load_model(checkpoint)
    _check_finite_weights(checkpoint, model)
    # The export must compute what PyTorch computes: compare on one random input before writing.
    x, expected = _reference_output(checkpoint, model)
    data = onnx_bytes(model)
    max_diff = _difference_from(checkpoint, data, x, expected)
    if max_diff > MAX_DIFFERENCE:
        raise LeanEyeError(
            f"{checkpoint}: ONNX export differs from PyTorch by {max_diff:.2e} (expected < {MAX_DIFFERENCE:g})"
        )
    record = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(Path(checkpoint)),
        "opset": OPSET,
        "max_abs_difference_vs_torch": max_diff,
    }
    written = write_engine(
        out, data, builtin_manifest(model, meta["class_names"], record=record).to_dict(), force=force
    )
    return {**record, "engine": str(out), "onnx_bytes": len(data), "model_sha256": written.model_sha256}


def _check_finite(checkpoint: Path, who: str, output: np.ndarray) -> None:
    # Finite weights can still give NaN (a negative BatchNorm variance); NaN never fails a `>` test.
    if not np.isfinite(output).all():
        raise LeanEyeError(
            f"{checkpoint}: the model's {who} output holds NaN or infinite values; refusing to export it"
        )


def _reference_output(checkpoint: Path, model: LeanDet, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One random input and PyTorch's (finite) output for it."""
    c = model.config
    x = np.random.default_rng(seed).random((1, 3, c.input_height, c.input_width), dtype=np.float32)
    with torch.no_grad():
        expected = DecodedOutputs(model).eval()(torch.from_numpy(x)).numpy()
    _check_finite(checkpoint, "PyTorch", expected)
    return x, expected


def _difference_from(checkpoint: Path, data: bytes, x: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference between ONNX Runtime's output for `x` and PyTorch's `expected`."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {contract.INPUT_NAME: x})[0]
    _check_finite(checkpoint, "ONNX Runtime", got)
    return float(np.abs(got - expected).max())
