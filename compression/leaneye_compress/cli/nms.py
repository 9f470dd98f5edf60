"""`leaneye-compress nms`: append NMS to an engine's ONNX (NonMaxSuppression or TensorRT's EfficientNMS_TRT)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leaneye.atomic import check_output_path
from leaneye.cli.options import add_force_option, float_in, int_in

from ..stages.nms import KINDS, MAX_OUTPUT_BOXES  # light: onnx and onnx-graphsurgeon load in append_nms


def run(args: argparse.Namespace) -> int:
    from ..config import from_mapping
    from ..stages.nms import NmsConfig, append_nms

    check_output_path(args.out, args.force, "--out")
    options = ("kind", "score_threshold", "iou_threshold", "max_detections", "class_agnostic")
    config = from_mapping(NmsConfig, {key: getattr(args, key) for key in options}, "command line")
    print(json.dumps(append_nms(config, args.engine, args.out, args.force), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nms", help="append NMS to an engine's ONNX (decoder builtin or yolox) as an end2end engine directory"
    )
    p.add_argument("--engine", type=Path, required=True, help="engine directory whose decoder is builtin or yolox")
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="onnx",
        help="onnx: the NonMaxSuppression operator (ONNX Runtime, TensorRT); efficientnms: TensorRT's "
        "EfficientNMS_TRT plugin (TensorRT only) (default: %(default)s)",
    )
    p.add_argument(
        "--score-threshold",
        type=float_in("--score-threshold", "a score threshold in (0, 1]", 0.0, 1.0, low_open=True),
        default=0.25,
        help="baked into the graph: lower scores are dropped (default: %(default)s)",
    )
    p.add_argument(
        "--iou-threshold",
        type=float_in("--iou-threshold", "an NMS IoU threshold in [0, 1]", 0.0, 1.0),
        default=0.45,
        help="baked into the graph: a box overlapping a better one by more is dropped (default: %(default)s)",
    )
    p.add_argument(
        "--max-detections",
        type=int_in("--max-detections", f"a number of boxes from 1 to {MAX_OUTPUT_BOXES}", 1, MAX_OUTPUT_BOXES),
        default=300,
        help="baked into the graph: at most this many boxes per image (default: %(default)s)",
    )
    p.add_argument("--class-agnostic", action="store_true", help="suppress overlapping boxes of different classes too")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write (model.onnx + manifest.json)")
    add_force_option(p, "engine directory")
    p.set_defaults(func=run)
