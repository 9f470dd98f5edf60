"""`leaneye-compress export`: a LeanDet checkpoint as an engine directory, for ONNX Runtime (and from
there TensorRT) or for the PyTorch backend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leaneye.atomic import check_output_path
from leaneye.cli.options import add_force_option


def run(args: argparse.Namespace) -> int:
    from ..stages.export import export_engine, export_pytorch_engine

    check_output_path(args.out, args.force, "--out")
    export = export_pytorch_engine if args.backend == "pytorch" else export_engine
    print(json.dumps(export(args.checkpoint, args.out, args.force), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a LeanDet checkpoint to an engine directory")
    p.add_argument("checkpoint", type=Path, help="model.pt written by `leaneye-compress train`")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write (model + manifest.json)")
    p.add_argument(
        "--backend",
        choices=["onnxruntime", "pytorch"],
        default="onnxruntime",
        help="onnxruntime: model.onnx (also what `leaneye-compress engine` builds TensorRT plans from); "
        "pytorch: model.pt for the PyTorch backend, e.g. on a GPU without TensorRT (default: %(default)s)",
    )
    add_force_option(p, "engine directory")
    p.set_defaults(func=run)
