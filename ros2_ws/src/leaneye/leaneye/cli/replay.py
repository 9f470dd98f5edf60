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
from ..errors import ParameterError
from .options import (
    add_bootstrap_option,
    add_detection_options,
    add_engine_option,
    add_force_option,
    add_image_topic_option,
    add_json_option,
    add_max_detections_option,
    add_storage_option,
    backend_settings,
)

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
    add_engine_option(p)
    add_image_topic_option(p)
    p.add_argument(
        "--out",
        type=Path,
        help="output bag (/leaneye/detections, /leaneye/label_info, /leaneye/latency): a folder, "
        "or a single .mcap / .db3 file",
    )
    add_storage_option(p)
    add_json_option(p, "the summary")
    p.add_argument(
        "--class-id",
        choices=("index", "name"),
        default="index",
        help="hypothesis.class_id: the class index as a string, or the class name (default: %(default)s)",
    )
    add_detection_options(p, conf_help="score threshold of the published detections")
    add_max_detections_option(p)
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="ignore the bag's ground truth: run at --conf/--iou only (deployment latency), no mAP",
    )
    add_bootstrap_option(p)
    add_force_option(p, "--out and --json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..replay import ReplayOptions, replay_bag

    options = ReplayOptions(
        topic=args.topic,
        conf=args.conf,
        iou=args.iou,
        max_detections=args.max_detections,
        class_id=args.class_id,
        **backend_settings(args),
        evaluate=not args.no_eval,
        bootstrap=args.bootstrap,
    )
    if args.json is not None:
        check_output_path(args.json, args.force, "--json")
    try:
        report = replay_bag(args.bag, args.engine, options, out=args.out, storage=args.storage, force=args.force)
    except ParameterError as exc:
        raise exc.for_options({"out": "--out"}) from None
    print(report.format())
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
