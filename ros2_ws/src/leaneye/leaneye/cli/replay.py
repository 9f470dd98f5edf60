"""`leaneye replay BAG --engine DIR`: run an engine over a recorded bag, as the vehicle would.

    leaneye replay runs/demo/scenes/bag --engine engines/default --out runs/demo/detections --json replay.json
    leaneye replay runs/demo/scenes/bag --engine engines/default --out detections.mcap
    leaneye replay drive.mcap --engine engines/default --topic /front/image_raw/compressed

Prints frames, bad frames skipped, latency per stage (p50/p90/p99/max), throughput and, when the bag
carries the scene generator's ground truth, COCO mAP by shared/EVAL.md. The output bag and its
topics are described in `pydoc leaneye.replay`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import atomic_write_text, check_output_path
from ..eval.protocol import EVAL_PROTOCOL

# The handler imports the replay itself: building the parser must not load onnxruntime or rosbags.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="run an engine over a rosbag2 bag: detections, latency and (with ground truth) mAP",
        description="Replay every image of a bag's camera topic through an engine. Writes one Detection2DArray "
        "and one FrameLatency per frame (and a LabelInfo) to --out; frames that do not decode are "
        "counted and skipped. Bags from `leaneye scenes` are also scored against their ground truth "
        "(COCO mAP by shared/EVAL.md) from the same engine outputs postprocessed at the protocol's settings; "
        "the output is what --no-eval gives (see `pydoc leaneye.replay`).",
    )
    p.add_argument("bag", type=Path, help="bag folder, or a single .mcap / .db3 file")
    p.add_argument("--engine", required=True, type=Path, help="engine directory (model + manifest.json)")
    p.add_argument(
        "--topic",
        default="/camera/image_raw",
        help="image topic; an absent raw topic falls back to <topic>/compressed and back (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output bag (/leaneye/detections, /leaneye/label_info, /leaneye/latency): a folder, "
        "or a single .mcap / .db3 file",
    )
    p.add_argument(
        "--storage", choices=("mcap", "sqlite3"), help="storage of --out (default: the one its suffix names, else mcap)"
    )
    p.add_argument("--json", type=Path, help="also write the summary as JSON here")
    p.add_argument(
        "--class-id",
        choices=("index", "name"),
        default="index",
        help="hypothesis.class_id: the class index as a string, or the class name (default: %(default)s)",
    )
    p.add_argument(
        "--conf", type=float, default=0.25, help="score threshold of the published detections (default: %(default)s)"
    )
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default: %(default)s)")
    p.add_argument("--max-detections", type=int, default=300, help="at most this many per frame (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0 = the backend's default)")
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="ignore the bag's ground truth: run at --conf/--iou only (deployment latency), no mAP",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=EVAL_PROTOCOL.bootstrap,
        help="bootstrap resamples for the mAP intervals (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace existing --out and --json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..replay import ReplayOptions, replay_bag

    options = ReplayOptions(
        topic=args.topic,
        conf=args.conf,
        iou=args.iou,
        max_detections=args.max_detections,
        class_id=args.class_id,
        threads=args.threads,
        evaluate=not args.no_eval,
        bootstrap=args.bootstrap,
    )
    if args.json is not None:
        check_output_path(args.json, args.force, "--json")
    report = replay_bag(args.bag, args.engine, options, out=args.out, storage=args.storage, force=args.force)
    print(report.format())
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
