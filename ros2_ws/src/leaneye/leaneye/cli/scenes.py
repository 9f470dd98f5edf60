"""`leaneye scenes`: generate a labelled sequence of procedural driving frames (COCO JSON + rosbag2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_output_path
from ..errors import LeanEyeError


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LeanEyeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1224x370") from None
    if width <= 0 or height <= 0:
        raise LeanEyeError(f"--size {text!r}: expected positive width and height")
    return width, height


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "scenes", help="generate procedural driving scenes: images, COCO JSON and a rosbag2 bag", description=__doc__
    )
    p.add_argument("--frames", type=int, required=True, help="number of consecutive frames")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (images/, annotations.json, bag/, stats.json)"
    )
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")
    p.add_argument("--seed", type=int, default=0, help="same seed and library versions -> byte-identical output")
    p.add_argument("--size", default="1224x370", help="frame WIDTHxHEIGHT (default KITTI's 1224x370)")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate in Hz (stamps and motion; default 10)")
    p.add_argument("--compressed", action="store_true", help="also write jpeg CompressedImage on <topic>/compressed")
    p.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..scenes.dataset import generate_scene_dataset

    if args.frames <= 0:
        raise LeanEyeError(f"--frames {args.frames}: expected a positive number of frames")
    if args.rate <= 0:
        raise LeanEyeError(f"--rate {args.rate}: expected a positive frame rate in Hz")
    size = parse_size(args.size)
    check_output_path(args.out, args.force, "--out")
    stats = generate_scene_dataset(
        args.out,
        args.frames,
        args.seed,
        size,
        args.rate,
        storage=args.storage,
        compressed=args.compressed,
        frame_id=args.frame_id,
        force=args.force,
    )
    print(f"wrote {args.out}: {stats.format()}")
    return 0
