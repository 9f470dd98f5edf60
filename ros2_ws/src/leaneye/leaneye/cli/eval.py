"""`leaneye eval`: an engine's accuracy on labelled images, by the protocols of EVAL.md.

leaneye eval --engine engines/yolox_nano --kitti ../shared/fixtures/kitti_tiny
leaneye eval --engine engines/student --scenes data/heldout --json heldout.json
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_text, check_output_path
from ..errors import LeanEyeError
from ..eval import EVAL_PROTOCOL, GroundTruth, ImageDetections, coco_ground_truth, evaluate, kitti_ground_truth
from ..image_io import read_image
from .options import (
    add_backend_options,
    add_bootstrap_option,
    add_engine_option,
    add_force_option,
    add_json_option,
    add_seed_option,
    backend_settings,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="accuracy (COCO mAP with bootstrap intervals) of an engine on labelled images",
        description="Run an engine on labelled images and report COCO bbox mAP50-95, mAP50, "
        "AP50 per class and AP by object size, with 95 %% bootstrap intervals over images.",
    )
    add_engine_option(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--kitti", type=Path, help="KITTI folder (image_2/, label_2/): car and person, moderate difficulty"
    )
    source.add_argument("--scenes", type=Path, help="generated dataset folder: annotations.json (COCO) and images/")
    add_bootstrap_option(parser)
    add_seed_option(parser, "the bootstrap resampling")
    add_backend_options(parser)
    add_json_option(parser, "the result")
    add_force_option(parser, "--json file")
    parser.set_defaults(func=run)


def load_ground_truth(args) -> tuple[GroundTruth, Path]:
    """The labels and the folder their images' file names are relative to."""
    if args.kitti is not None:
        return kitti_ground_truth(args.kitti), args.kitti / "image_2"
    annotations = args.scenes / "annotations.json"
    if not annotations.is_file():
        raise LeanEyeError(
            f"--scenes {args.scenes}: expected a generated dataset folder with annotations.json and images/"
        )
    return coco_ground_truth(annotations), args.scenes / "images"


def detect_all(detector, ground_truth: GroundTruth, image_dir: Path) -> dict:
    detections = {}
    for image in ground_truth.images:
        found = detector.detect(read_image(image_dir / image.file_name)[1])
        detections[image.image_id] = ImageDetections.from_class_ids(
            found.boxes, found.scores, found.class_ids, found.class_names
        )
    return detections


def run(args) -> int:
    from ..detector import Detector

    if args.json is not None:
        check_output_path(args.json, args.force, "--json")
    ground_truth, image_dir = load_ground_truth(args)
    with Detector.from_engine(
        args.engine,
        **backend_settings(args),
        **EVAL_PROTOCOL.detector_settings(),
    ) as detector:
        detections = detect_all(detector, ground_truth, image_dir)
    result = evaluate(ground_truth, detections, bootstrap=args.bootstrap, seed=args.seed)
    source = f"KITTI {args.kitti} (car/person, moderate)" if args.kitti is not None else f"scenes {args.scenes}"
    print(f"{args.engine} on {source}")
    print(result.format())
    if args.json is not None:
        report = {"engine": str(args.engine), "image_dir": str(image_dir), **result.to_dict()}
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0
