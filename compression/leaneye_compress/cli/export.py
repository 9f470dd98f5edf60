"""`leaneye-compress export`: a LeanDet checkpoint as an ONNX Runtime engine directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leaneye.atomic import check_output_path
from leaneye.cli.options import add_force_option


def run(args: argparse.Namespace) -> int:
    from ..stages.export import export_engine

    check_output_path(args.out, args.force, "--out")
    print(json.dumps(export_engine(args.checkpoint, args.out, args.force), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a LeanDet checkpoint to an ONNX Runtime engine directory")
    p.add_argument("checkpoint", type=Path, help="model.pt written by `leaneye-compress train`")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write (model.onnx + manifest.json)")
    add_force_option(p, "engine directory")
    p.set_defaults(func=run)
