"""Export a LeanDet checkpoint to an engine directory: one self-contained ONNX file + manifest.json.

The ONNX file holds its weights inside (torch's exporter would otherwise write a separate
`.onnx.data` file), uses opset 17, and outputs the decoded tensor described in
`leaneye_compress.models.detector` ("builtin" decoder). Input: `images`, float32 [1, 3, H, W],
BGR, pixel values / 255, letterboxed centred with pad value 114.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from leaneye.engine import InputSpec, Manifest, file_sha256, tool_versions, write_engine
from leaneye.errors import LeanEyeError

from ..checkpoint import load_model
from ..models.detector import LeanDet

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "output"


def builtin_manifest(
    model: LeanDet, class_names, model_sha256: str = "", precision: str = "fp32", record: dict | None = None
) -> Manifest:
    """How a runtime feeds and decodes this model (the sha is filled in when the file is written).

    `record` (what the export stage did) goes into the manifest's producer field.
    """
    c = model.config
    return Manifest(
        backend="onnxruntime",
        precision=precision,
        model="model.onnx",
        model_sha256=model_sha256,
        input=InputSpec(name=INPUT_NAME, shape=(1, 3, c.input_height, c.input_width), color="bgr", scale=1 / 255),
        letterbox_align="center",
        letterbox_pad_value=114,
        decoder="builtin",
        decoder_params={},
        class_names=tuple(class_names),
        producer={
            "tool": "leaneye-compress export",
            "versions": tool_versions("leaneye-compress", "torch", "onnx"),
            **(record or {}),
        },
    )


def onnx_bytes(model: LeanDet) -> bytes:
    """The model as one ONNX protobuf with weights embedded, decoded output, batch 1."""
    import onnx

    c = model.config
    model = model.eval()
    model.export_decoded = True
    dummy = torch.zeros(1, 3, c.input_height, c.input_width)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (dummy,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        model.export_decoded = False
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    return buffer.getvalue()


def export_engine(checkpoint: Path, out: Path, force: bool = False) -> dict:
    """Checkpoint → engine directory; returns what the stage did, also recorded in the manifest's producer field."""
    model, meta = load_model(checkpoint)
    data = onnx_bytes(model)
    # The export must compute what PyTorch computes: compare on one random input before writing.
    max_diff = onnx_max_difference(model, data)
    if max_diff > 1e-3:
        raise LeanEyeError(f"{checkpoint}: ONNX export differs from PyTorch by {max_diff:.2e} (expected < 1e-3)")
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


def onnx_max_difference(model: LeanDet, data: bytes, seed: int = 0) -> float:
    """Largest absolute difference between the ONNX Runtime and PyTorch outputs on one input."""
    import onnxruntime as ort

    c = model.config
    x = torch.from_numpy(np.random.default_rng(seed).random((1, 3, c.input_height, c.input_width), dtype=np.float32))
    model.eval()
    model.export_decoded = True
    try:
        with torch.no_grad():
            expected = model(x).numpy()
    finally:
        model.export_decoded = False
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    return float(np.abs(got - expected).max())


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a LeanDet checkpoint to an ONNX Runtime engine directory")
    p.add_argument("checkpoint", type=Path, help="model.pt written by `leaneye-compress train`")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write (model.onnx + manifest.json)")
    p.add_argument("--force", action="store_true", help="replace an existing engine directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from leaneye.atomic import check_output_path

    check_output_path(args.out, args.force, "--out")
    record = export_engine(args.checkpoint, args.out, args.force)
    print(json.dumps(record, indent=2), file=sys.stdout)
    return 0
