"""`leaneye-compress import`: an external ONNX detector wrapped into an engine directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option
from leaneye.vision.decoders import DECODERS

from ..stages import import_onnx


def run(args: argparse.Namespace) -> int:
    manifest = import_onnx.import_model(
        args.model,
        args.decoder,
        args.out,
        classes=args.classes,
        input_format=args.input_format,
        align=args.align,
        input_size=args.input_size,
        force=args.force,
    )
    shape = manifest["input"]["shape"]
    print(
        f"{args.out}: {manifest['decoder']['type']} engine, input {manifest['input']['name']} "
        f"{shape[3]}x{shape[2]} {manifest['input']['color']}, {len(manifest['class_names'])} classes"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="wrap an external ONNX detector into an engine directory",
        description=import_onnx.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model")
    p.add_argument("--decoder", required=True, choices=sorted(DECODERS), help="the model's output layout")
    p.add_argument("--out", required=True, type=Path, help="engine directory to write")
    p.add_argument("--classes", type=Path, help="text file, one class name per line (optional for Ultralytics exports)")
    p.add_argument(
        "--input-format",
        choices=sorted(import_onnx.INPUT_FORMATS),
        help="channel order and value range the model expects (default: per decoder)",
    )
    p.add_argument("--align", choices=["center", "top-left"], help="letterbox alignment (default: per decoder)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="input size for models with dynamic height/width",
    )
    add_force_option(p, "engine directory")
    p.set_defaults(func=run)
