"""`leaneye baginfo BAG` and `leaneye bag from-video VIDEO --out BAG`."""

from __future__ import annotations

import argparse
import decimal

from ..errors import ParameterError
from .options import add_force_option, add_frame_id_option, add_storage_option, frame_rate, int_in

# The handlers import the bag modules themselves: `leaneye` must start without rosbags installed.


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser(
        "baginfo",
        help="topics, types, counts and time span of a rosbag2 bag (like `ros2 bag info`)",
        description="Print what a rosbag2 bag holds. BAG is a bag folder or a single .mcap / .db3 file.",
    )
    info.add_argument("bag", help="bag folder, or a .mcap / .db3 file")
    info.add_argument(
        "--count", action="store_true", help="read every message to count it, and check the counts against the bag's"
    )
    info.set_defaults(func=_baginfo)

    bag = subparsers.add_parser("bag", help="make rosbag2 bags", description="Make rosbag2 bags.")
    bag_commands = bag.add_subparsers(dest="bag_command", required=True)
    from_video = bag_commands.add_parser(
        "from-video",
        help="a video file as a bag of camera images",
        description=(
            "Write every frame of a video as sensor_msgs/msg/CompressedImage (JPEG), stamped at the "
            "video's frame rate, and with --raw also as sensor_msgs/msg/Image bgr8 on the raw topic."
        ),
    )
    from_video.add_argument("video", help="video file OpenCV can read (mp4, avi, mkv, ...)")
    from_video.add_argument("--out", required=True, help="bag to create: a folder, or a single .mcap / .db3 file")
    from_video.add_argument(
        "--topic",
        default="/camera/image_raw/compressed",
        help="image topic; the compressed images go on <base>/compressed, raw ones on <base> (default: %(default)s)",
    )
    add_frame_id_option(from_video)
    from_video.add_argument("--raw", action="store_true", help="also write raw bgr8 images on the raw topic")
    add_storage_option(from_video)
    from_video.add_argument("--fps", type=frame_rate("--fps"), help="frame rate to stamp with, overriding the video's")
    from_video.add_argument(
        "--start-time",
        type=_unix_time_ns,
        default=0,
        metavar="SECONDS",
        help="Unix time of the first frame, e.g. the recording's start (1700000000.25; default 0, the epoch)",
    )
    from_video.add_argument(
        "--jpeg-quality",
        type=int_in("--jpeg-quality", "0-100", 0, 100),
        default=90,
        help="0-100 (default: %(default)s)",
    )
    add_force_option(from_video, "--out")
    from_video.set_defaults(func=_from_video)


def _baginfo(args: argparse.Namespace) -> int:
    from ..bags import bag_info

    print(bag_info(args.bag, count=args.count).format_text())
    return 0


def _unix_time_ns(text: str) -> int:
    """Seconds since the epoch, read exactly (a float would round stamps of today to ~0.2 us)."""
    try:
        seconds = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected seconds since the epoch, got {text!r}") from None
    if not seconds.is_finite() or seconds < 0:
        raise argparse.ArgumentTypeError(f"expected seconds since the epoch (>= 0), got {text!r}")
    return int(seconds * 1_000_000_000)


def _from_video(args: argparse.Namespace) -> int:
    from ..bags import bag_info
    from ..video import image_topics, video_to_bag

    try:
        count = video_to_bag(
            args.video,
            args.out,
            topic=args.topic,
            frame_id=args.frame_id,
            raw=args.raw,
            storage=args.storage,
            force=args.force,
            fps=args.fps,
            start_ns=args.start_time,
            jpeg_quality=args.jpeg_quality,
        )
    except ParameterError as exc:
        raise exc.for_options({"fps": "--fps", "start_ns": "--start-time/--fps"}) from None
    raw_topic, compressed_topic = image_topics(args.topic)
    topics = f"{compressed_topic}" + (f" and {raw_topic}" if args.raw else "")
    print(f"wrote {count} frames on {topics} to {args.out}")
    print(bag_info(args.out).format_text())
    return 0
