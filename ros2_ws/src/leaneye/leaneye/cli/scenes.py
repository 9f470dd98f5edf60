"""`leaneye scenes`: generate a labelled sequence of procedural driving frames (COCO JSON + rosbag2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_output_path
from ..errors import LeanEyeError
from .options import add_force_option, add_frame_id_option, add_seed_option, frame_rate

MAX_SCENE_SIDE = 8192  # a frame this size already takes 200 MB per rendered layer


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LeanEyeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1224x370") from None
    if not (0 < width <= MAX_SCENE_SIDE and 0 < height <= MAX_SCENE_SIDE):
        raise LeanEyeError(f"--size {text!r}: expected width and height from 1 to {MAX_SCENE_SIDE}")
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
    add_seed_option(p, "the scenes: same seed and library versions, byte-identical output")
    p.add_argument("--size", default="1224x370", help="frame WIDTHxHEIGHT (default KITTI's 1224x370)")
    p.add_argument(
        "--rate", type=frame_rate("--rate"), default=10.0, help="frame rate in Hz (stamps and motion; default 10)"
    )
    p.add_argument("--compressed", action="store_true", help="also write jpeg CompressedImage on <topic>/compressed")
    add_frame_id_option(p)
    add_force_option(p, "output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..scenes.dataset import generate_scene_dataset

    if args.frames <= 0:
        raise LeanEyeError(f"--frames {args.frames}: expected a positive number of frames")
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
