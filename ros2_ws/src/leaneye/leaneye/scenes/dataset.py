"""A labelled dataset of generated frames: PNG images, COCO JSON, a rosbag2 bag, and statistics.

Folder layout written by `write_scene_dataset` (and `leaneye scenes`):

    DIR/images/000000.png ...     lossless frames, BGR
    DIR/annotations.json          COCO instances; iscrowd = 1 (and ignore = 1) marks ignore regions
    DIR/bag/                      rosbag2: /camera/image_raw (sensor_msgs/Image bgr8),
                                  optionally /camera/image_raw/compressed (jpeg), ground truth as
                                  vision_msgs/Detection2DArray on /ground_truth/detections, ignore
                                  regions on /ground_truth/ignore_regions (same stamps and frame_id
                                  as the images; hypothesis class_id = class index as a string),
                                  and the class map as vision_msgs/LabelInfo on /ground_truth/label_info
    DIR/stats.json                sizes, occlusion and truncation of the objects (see SceneStats)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..atomic import atomic_path
from ..errors import LeanEyeError
from .classes import COCO_IDS, SCENE_CLASSES
from .render import MIN_LABEL_HEIGHT_PX, SceneFrame

if TYPE_CHECKING:
    from ..msgs.types import MessageTypes

IMAGE_TOPIC = "/camera/image_raw"
GROUND_TRUTH_TOPIC = "/ground_truth/detections"
IGNORE_TOPIC = "/ground_truth/ignore_regions"
LABEL_INFO_TOPIC = "/ground_truth/label_info"


@dataclass
class SceneStats:
    """What the generator produced; difficulty is part of the spec (KITTI-like sizes)."""

    frames: int = 0
    objects: int = 0
    labelled: int = 0
    ignore_regions: int = 0
    per_class: dict | None = None  # name -> [labelled, ignored]
    car_heights_px: list | None = None
    occluded: int = 0  # objects with more than half of their in-frame pixels hidden
    partly_occluded: int = 0  # objects with some in-frame pixels hidden
    truncated: int = 0  # objects with more than 30 % outside the frame

    def add(self, frame: SceneFrame) -> None:
        if self.per_class is None:
            self.per_class = {name: [0, 0] for name in SCENE_CLASSES}
            self.car_heights_px = []
        self.frames += 1
        for obj in frame.objects:
            self.objects += 1
            self.per_class[obj.class_name][int(obj.ignore)] += 1
            self.ignore_regions += int(obj.ignore)
            self.labelled += int(not obj.ignore)
            self.occluded += int(obj.occlusion > 0.5)
            self.partly_occluded += int(obj.occlusion > 0.0)
            self.truncated += int(obj.truncation > 0.3)
            if obj.class_name == "car":
                self.car_heights_px.append(obj.box[3] - obj.box[1])

    def summary(self) -> dict:
        heights = np.asarray(self.car_heights_px or [0.0])
        n = max(self.objects, 1)
        return {
            "frames": self.frames,
            "objects": self.objects,
            "labelled": self.labelled,
            "ignore_regions": self.ignore_regions,
            "per_class": {k: {"labelled": v[0], "ignored": v[1]} for k, v in (self.per_class or {}).items()},
            "cars": len(self.car_heights_px or []),
            "car_height_median_px": float(np.median(heights)),
            "cars_shorter_than_45px": float(np.mean(heights < 45)),
            "cars_shorter_than_25px": float(np.mean(heights < MIN_LABEL_HEIGHT_PX)),
            "occluded_over_half_rate": self.occluded / n,
            "partly_occluded_rate": self.partly_occluded / n,
            "truncated_over_30pct_rate": self.truncated / n,
        }

    def format(self) -> str:
        s = self.summary()
        return (
            f"{s['frames']} frames, {s['objects']} objects ({s['labelled']} labelled, {s['ignore_regions']} ignore regions); "
            f"cars: {s['cars']}, median height {s['car_height_median_px']:.0f} px, "
            f"{100 * s['cars_shorter_than_45px']:.0f}% < 45 px, {100 * s['cars_shorter_than_25px']:.0f}% < 25 px; "
            f"occluded > 50%: {100 * s['occluded_over_half_rate']:.0f}% of objects (any occlusion: "
            f"{100 * s['partly_occluded_rate']:.0f}%), truncated > 30%: {100 * s['truncated_over_30pct_rate']:.0f}%"
        )


def coco_annotations(frame: SceneFrame, image_id: int, first_annotation_id: int) -> list[dict]:
    out = []
    for k, obj in enumerate(frame.objects):
        x1, y1, x2, y2 = obj.box
        out.append(
            {
                "id": first_annotation_id + k,
                "image_id": image_id,
                "category_id": COCO_IDS[obj.class_name],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(obj.ignore),
                "ignore": int(obj.ignore),
                "track_id": obj.track_id,
                "visible_fraction": round(obj.visible_fraction, 4),
                "truncation": round(obj.truncation, 4),
                "occlusion": round(obj.occlusion, 4),
            }
        )
    return out


def coco_categories() -> list[dict]:
    return [{"id": COCO_IDS[name], "name": name} for name in SCENE_CLASSES]


def scene_ground_truth(frames: Iterable[SceneFrame]):
    """Ground truth for `leaneye.evaluation`, straight from frames in memory (image id = position in `frames`)."""
    from ..eval import GroundTruth, ImageTruth

    images = []
    for image_id, frame in enumerate(frames):
        boxes = np.array([o.box for o in frame.objects], dtype=np.float64).reshape(-1, 4)
        images.append(
            ImageTruth(
                image_id,
                f"{frame.index:06d}.png",
                frame.image.shape[1],
                frame.image.shape[0],
                boxes,
                tuple(o.class_name for o in frame.objects),
                np.array([o.ignore for o in frame.objects], bool),
            )
        )
    return GroundTruth(images, SCENE_CLASSES)


def ground_truth_messages(frame: SceneFrame, frame_id: str, types: MessageTypes | None = None):
    """(header, Detection2DArray of the labelled objects, Detection2DArray of the ignore regions) of a
    frame, stamped with its stamp: what a scene bag and the simulated camera publish; `types` as in
    leaneye.msgs (default: the rosbags typestore)."""
    from .. import msgs

    head = msgs.header(frame.stamp_ns, frame_id, types)
    split = {False: [], True: []}
    for obj in frame.objects:
        split[obj.ignore].append(obj)
    out = []
    for objs in (split[False], split[True]):
        boxes = np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4)
        out.append(
            msgs.detection_array_msg(
                head,
                boxes,
                [1.0] * len(objs),
                [str(o.class_id) for o in objs],
                [str(o.track_id) for o in objs],
                types=types,
            )
        )
    return head, out[0], out[1]


def write_scene_dataset(
    out: Path,
    frames: Iterable[SceneFrame],
    storage: str = "mcap",
    compressed: bool = False,
    frame_id: str = "camera",
    force: bool = False,
    progress=None,
) -> SceneStats:
    """Write images, COCO JSON, bag and stats into `out`, which appears only when all is written."""
    from .. import msgs
    from ..bags import open_bag_writer

    stats = SceneStats()
    images, annotations = [], []
    with atomic_path(out, force=force, is_dir=True) as tmp:
        (tmp / "images").mkdir()
        with open_bag_writer(tmp / "bag", storage=storage) as bag:
            bag.add_topic(IMAGE_TOPIC, msgs.IMAGE)
            if compressed:
                bag.add_topic(IMAGE_TOPIC + "/compressed", msgs.COMPRESSED_IMAGE)
            bag.add_topic(GROUND_TRUTH_TOPIC, msgs.DETECTION_ARRAY)
            bag.add_topic(IGNORE_TOPIC, msgs.DETECTION_ARRAY)
            bag.add_topic(LABEL_INFO_TOPIC, msgs.LABEL_INFO)
            for frame in frames:
                name = f"{frame.index:06d}.png"
                _write_png(tmp / "images" / name, frame.image)
                height, width = frame.image.shape[:2]
                images.append(
                    {"id": frame.index, "file_name": name, "width": width, "height": height, "stamp_ns": frame.stamp_ns}
                )
                annotations += coco_annotations(frame, frame.index, len(annotations) + 1)
                head, truth, ignored = ground_truth_messages(frame, frame_id)
                if not stats.frames:
                    bag.write(LABEL_INFO_TOPIC, frame.stamp_ns, msgs.label_info_msg(head, SCENE_CLASSES))
                bag.write(IMAGE_TOPIC, frame.stamp_ns, msgs.image_msg(frame.image, frame.stamp_ns, frame_id))
                if compressed:
                    bag.write(
                        IMAGE_TOPIC + "/compressed",
                        frame.stamp_ns,
                        msgs.compressed_image_msg(frame.image, frame.stamp_ns, frame_id),
                    )
                bag.write(GROUND_TRUTH_TOPIC, frame.stamp_ns, truth)
                bag.write(IGNORE_TOPIC, frame.stamp_ns, ignored)
                stats.add(frame)
                if progress is not None:
                    progress.update(1)
        coco = {
            "info": {"description": "LeanEye procedural driving scenes"},
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        }
        (tmp / "annotations.json").write_text(json.dumps(coco))
        (tmp / "stats.json").write_text(json.dumps(stats.summary(), indent=2))
    return stats


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise LeanEyeError(f"{path}: OpenCV could not encode the frame as PNG")
    try:
        path.write_bytes(png.tobytes())
    except OSError as exc:  # a write error names no file; a full disk is the usual cause
        raise LeanEyeError(f"{path}: cannot write ({exc.strerror or exc})") from None


def generate_scene_dataset(
    out: Path,
    frames: int,
    seed: int,
    size: tuple[int, int] = (1224, 370),
    rate_hz: float = 10.0,
    storage: str = "mcap",
    compressed: bool = False,
    frame_id: str = "camera",
    force: bool = False,
) -> SceneStats:
    """Render `frames` frames of sequence `seed` into a dataset folder, with a progress bar."""
    from tqdm import tqdm

    from .render import generate_frames

    with tqdm(total=frames, desc="scenes", unit="frame", file=sys.stderr) as progress:
        return write_scene_dataset(
            out,
            generate_frames(frames, seed, size, rate_hz),
            storage=storage,
            compressed=compressed,
            frame_id=frame_id,
            force=force,
            progress=progress,
        )
