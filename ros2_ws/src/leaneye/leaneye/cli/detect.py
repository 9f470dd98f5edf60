"""`leaneye detect`: run an engine on image files.

    leaneye detect --engine engines/yolox_nano frames/ extra.jpg --coco-json detections.json

`--coco-json` file (UTF-8 JSON object):

    {
      "images":      [{"id": 1, "file_name": "frames/000001.jpeg", "width": 1242, "height": 375}, ...],
      "annotations": [{"id": 1, "image_id": 1, "file_name": "frames/000001.jpeg",
                       "category_id": 3, "category_name": "car",
                       "bbox": [x, y, width, height], "area": width * height, "score": 0.91}, ...],
      "categories":  [{"id": 1, "name": "person"}, ...]
    }

Image ids count from 1 in the order the images were processed. category_id is the engine's class
index + 1 and "categories" lists every class of the engine. Boxes are in original image pixels
(COCO convention: top-left corner, width, height). "annotations" is at the same time a COCO
results list (image_id, category_id, bbox, score) for pycocotools' `loadRes`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text, check_output_path
from ..errors import LeanEyeError
from ..image_io import image_paths, read_image
from .options import (
    add_detection_options,
    add_engine_option,
    add_force_option,
    add_max_detections_option,
    backend_settings,
)


def coco_results(records: list) -> dict:
    """COCO images/annotations/categories from (path, Detections) records (format in the module docstring)."""
    images, annotations = [], []
    class_names: tuple = ()
    for image_id, (path, found) in enumerate(records, 1):
        height, width = found.image_size
        images.append({"id": image_id, "file_name": str(path), "width": int(width), "height": int(height)})
        class_names = found.class_names
        for box, score, class_id in zip(found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "file_name": str(path),
                    "category_id": class_id + 1,
                    "category_name": found.class_names[class_id],
                    "bbox": [round(v, 2) for v in (box[0], box[1], w, h)],
                    "area": round(w * h, 2),
                    "score": round(score, 5),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def summary_line(path: Path, found) -> str:
    counts: dict = {}
    for name in found.names:
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    total_ms = sum(found.timings.values())
    return f"{path}: {len(found)} detections{' (' + listed + ')' if listed else ''}, {total_ms:.1f} ms"


def run_detect(args) -> int:
    from tqdm import tqdm

    from ..detector import Detector, NonFiniteOutputs

    if args.coco_json is not None:
        check_output_path(args.coco_json, args.force, "--coco-json")
    paths = image_paths(args.images)
    records = []
    with Detector.from_engine(
        args.engine,
        conf=args.conf,
        iou=args.iou,
        max_detections=args.max_detections,
        class_agnostic=args.agnostic,
        **backend_settings(args),
    ) as detector:
        for path in tqdm(paths, desc="detect", unit="image", file=sys.stderr, disable=len(paths) < 10):
            try:
                found = detector.detect(read_image(path)[1])
            except NonFiniteOutputs as exc:
                raise LeanEyeError(f"{args.engine}: on {path}: {exc}") from None
            records.append((path, found))
            tqdm.write(summary_line(path, found), file=sys.stdout)
    if args.coco_json is not None:
        # NaN or infinite values are not JSON: refusing them here backs up the detector's own check.
        atomic_write_text(args.coco_json, json.dumps(coco_results(records), allow_nan=False) + "\n")
        print(f"{args.coco_json}: {sum(len(found) for _, found in records)} detections on {len(records)} images")
    return 0


def register(subparsers) -> None:
    detect = subparsers.add_parser(
        "detect",
        help="detect objects in images with an engine",
        description="Run an engine on image files or directories of images; print a "
        "summary per image and optionally write COCO-style JSON results.",
    )
    add_engine_option(detect)
    detect.add_argument("images", nargs="+", type=Path, help="image files and/or directories of images")
    detect.add_argument("--coco-json", type=Path, help="write detections here (format: see `pydoc leaneye.cli.detect`)")
    add_force_option(detect, "--coco-json file")
    add_detection_options(detect)
    add_max_detections_option(detect)
    detect.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    detect.set_defaults(func=run_detect)
