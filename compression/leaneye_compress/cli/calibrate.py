"""`leaneye-compress calibrate`: an FP32 engine to an INT8 engine, chosen by measured accuracy and latency."""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option

from ..artifacts import outcome


def _overridden(config, args: argparse.Namespace):
    """The config with the command line's flags applied (flags win over the YAML file)."""
    from ..config import from_mapping, to_mapping
    from ..stages.calibrate import CalibrateConfig

    values = to_mapping(config)
    if args.data:
        # Frames named on the command line replace the config's, generated scenes included.
        values["data"] = {**values["data"], "paths": [str(p) for p in args.data], "scenes": {"sequences": 0}}
    if args.topic is not None:
        values["data"]["topic"] = args.topic
    if args.every is not None:
        values["data"]["every"] = args.every
    if args.labels is not None:
        values["selection"]["kitti"] = str(args.labels)
    if args.label_images is not None:
        values["selection"]["first"], values["selection"]["count"] = args.label_images
    for key in ("method", "threads"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return from_mapping(CalibrateConfig, values, "command line")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..stages.calibrate import CalibrateConfig, calibrate

    config = load_config(CalibrateConfig, args.config) if args.config else CalibrateConfig()
    config = _overridden(config, args)
    record, skipped = calibrate(config, args.engine, args.out, force=args.force)
    done = outcome(skipped, "inputs and config")
    print(f"{record['details']['why']}; {done} {args.out} (precision {record['metrics']['precision']})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate an FP32 engine to INT8 (QDQ) with per-layer fallback and a measured latency choice",
    )
    p.add_argument("--engine", type=Path, required=True, help="FP32 engine directory (leaneye-compress export/import)")
    p.add_argument(
        "--data", type=Path, nargs="+", help="calibration frames: image files or folders, videos, rosbag2 bags"
    )
    p.add_argument("--topic", help="the bags' image topic (default: each bag's only image topic)")
    p.add_argument("--every", type=int, help="keep every n-th frame of each video and bag topic")
    p.add_argument("--labels", type=Path, help="KITTI folder (image_2/, label_2/) to score configurations on")
    p.add_argument(
        "--label-images",
        type=int,
        nargs=2,
        metavar=("FIRST", "COUNT"),
        help="score on images FIRST .. FIRST+COUNT-1 of --labels (by name; COUNT 0 = to the end)",
    )
    p.add_argument("--method", help="calibration method: minmax, entropy or percentile")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for scoring and latency (default 2)")
    p.add_argument("--config", type=Path, help="YAML calibrate config (keys of CalibrateConfig)")
    p.add_argument("--out", type=Path, required=True, help="output engine directory")
    add_force_option(p, "output folder, even one up to date")
    p.set_defaults(func=run)
