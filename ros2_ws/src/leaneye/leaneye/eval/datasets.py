"""Ground truth for evaluation: KITTI labels, COCO JSON, and the per-image containers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LeanEyeError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# KITTI-2D car/person, "moderate" (EVAL.md).
KITTI_SCORED = {"Car": "car", "Pedestrian": "person"}
KITTI_IGNORED_FOR_ALL = frozenset({"DontCare", "Van", "Truck", "Tram", "Misc", "Cyclist", "Person_sitting"})
KITTI_MIN_HEIGHT = 25.0
KITTI_MAX_OCCLUSION = 1
KITTI_MAX_TRUNCATION = 0.30


def _boxes(values, what: str) -> np.ndarray:
    boxes = np.asarray(values, dtype=np.float64).reshape(-1, 4) if len(values) else np.zeros((0, 4))
    if not np.all(np.isfinite(boxes)):
        raise LeanEyeError(f"{what}: boxes must be finite numbers")
    return boxes


@dataclass
class ImageTruth:
    """The labels of one image. Boxes are x1, y1, x2, y2 in original image pixels."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float
    class_names: tuple  # N names
    ignore: np.ndarray  # (N,) bool: an ignore region for its own class, not an object to find
    ignore_all: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (M, 4) ignored for every class


@dataclass
class GroundTruth:
    images: list  # of ImageTruth
    classes: tuple  # the classes scored

    def num_objects(self, classes: Iterable[str] | None = None) -> int:
        """Objects to find: boxes of a scored class that are not ignore regions."""
        scored = set(self.classes if classes is None else classes)
        return sum(
            int(np.sum([(name in scored) and not ign for name, ign in zip(im.class_names, im.ignore)]))
            for im in self.images
        )


@dataclass
class ImageDetections:
    """One image's detections: boxes x1, y1, x2, y2 in original image pixels, scores, one class name per box."""

    boxes: np.ndarray
    scores: np.ndarray
    class_names: tuple

    @classmethod
    def from_class_ids(cls, boxes, scores, class_ids, names: Sequence[str]) -> ImageDetections:
        """From a detector's class indices and its full list of class names."""
        return cls(
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(scores, dtype=np.float64).reshape(-1),
            tuple(names[int(i)] for i in np.asarray(class_ids).reshape(-1)),
        )

    @classmethod
    def from_truth(cls, image: ImageTruth, score: float = 1.0) -> ImageDetections:
        """The image's objects (ignore regions left out) as detections: a perfect detector, for checks."""
        keep = ~image.ignore
        return cls(
            image.boxes[keep], np.full(int(keep.sum()), score), tuple(np.asarray(image.class_names, dtype=object)[keep])
        )

    def __len__(self) -> int:
        return len(self.scores)


def _image_files(folder: Path) -> dict:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _image_size(path: Path) -> tuple:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise LeanEyeError(f"{path}: not a readable image")
    return int(image.shape[1]), int(image.shape[0])


def kitti_ground_truth(kitti_dir: Path | str) -> GroundTruth:
    """KITTI label_2 files (image_2/ + label_2/) under the car/person "moderate" rule of EVAL.md."""
    root = Path(kitti_dir)
    images_dir, labels_dir = root / "image_2", root / "label_2"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise LeanEyeError(f"{root}: expected a KITTI folder with image_2/ and label_2/")
    images = _image_files(images_dir)
    if not images:
        raise LeanEyeError(f"{images_dir}: no .jpeg/.jpg/.png images")
    truth = []
    for image_id, (stem, image_path) in enumerate(images.items()):
        label_path = labels_dir / f"{stem}.txt"
        if not label_path.is_file():
            raise LeanEyeError(f"{label_path}: missing label file for {image_path.name}")
        boxes, names, ignore, ignore_all = [], [], [], []
        for line_no, line in enumerate(label_path.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                kind, truncation, occlusion = fields[0], float(fields[1]), int(float(fields[2]))
                box = [float(v) for v in fields[4:8]]
            except (IndexError, ValueError):
                raise LeanEyeError(
                    f"{label_path}:{line_no}: expected 'class truncation occlusion alpha x1 y1 x2 y2 ...'"
                ) from None
            if len(box) != 4:
                raise LeanEyeError(
                    f"{label_path}:{line_no}: expected 'class truncation occlusion alpha x1 y1 x2 y2 ...'"
                )
            if kind in KITTI_SCORED:
                moderate = (
                    box[3] - box[1] >= KITTI_MIN_HEIGHT
                    and occlusion <= KITTI_MAX_OCCLUSION
                    and truncation <= KITTI_MAX_TRUNCATION
                )
                boxes.append(box)
                names.append(KITTI_SCORED[kind])
                ignore.append(not moderate)
            elif kind in KITTI_IGNORED_FOR_ALL:
                ignore_all.append(box)
            else:
                raise LeanEyeError(f"{label_path}:{line_no}: unknown KITTI class {kind!r}")
        width, height = _image_size(image_path)
        truth.append(
            ImageTruth(
                image_id,
                image_path.name,
                width,
                height,
                _boxes(boxes, str(label_path)),
                tuple(names),
                np.array(ignore, dtype=bool),
                _boxes(ignore_all, str(label_path)),
            )
        )
    return GroundTruth(truth, tuple(KITTI_SCORED.values()))


def coco_ground_truth(coco_json_path: Path | str) -> GroundTruth:
    """A COCO instances JSON (the scene generator's annotations.json). iscrowd or ignore = ignore region.

    Every category of the file is scored.
    """
    path = Path(coco_json_path)
    try:
        data = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        image_entries = data["images"]
        annotations = data["annotations"]
    except FileNotFoundError:
        raise LeanEyeError(f"{path}: file not found") from None
    except (ValueError, KeyError, TypeError):
        raise LeanEyeError(f"{path}: expected COCO JSON with images, annotations and categories (id, name)") from None
    by_image: dict = {}
    for ann in annotations:
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            name = categories[int(ann["category_id"])]
            ignored = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
            by_image.setdefault(int(ann["image_id"]), []).append(([x, y, x + w, y + h], name, ignored))
        except (KeyError, ValueError, TypeError):
            raise LeanEyeError(
                f"{path}: annotation {ann.get('id', '?')}: expected image_id, known category_id and bbox [x, y, w, h]"
            ) from None
    truth = []
    for entry in image_entries:
        try:
            image_id = int(entry["id"])
            anns = by_image.pop(image_id, [])
            truth.append(
                ImageTruth(
                    image_id,
                    str(entry["file_name"]),
                    int(entry["width"]),
                    int(entry["height"]),
                    _boxes([a[0] for a in anns], str(path)),
                    tuple(a[1] for a in anns),
                    np.array([a[2] for a in anns], dtype=bool),
                )
            )
        except (KeyError, ValueError, TypeError):
            raise LeanEyeError(f"{path}: image entry {entry!r:.80}: expected id, file_name, width, height") from None
    if by_image:
        raise LeanEyeError(f"{path}: annotations refer to unknown image ids {sorted(by_image)[:5]}")
    return GroundTruth(truth, tuple(categories[k] for k in sorted(categories)))
