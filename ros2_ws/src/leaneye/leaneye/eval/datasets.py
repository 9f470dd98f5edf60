"""Ground truth for evaluation: KITTI labels, COCO JSON, and the per-image containers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LeanEyeError
from ..image_io import image_files, read_image

# KITTI-2D car/person, "moderate" (EVAL.md).
KITTI_SCORED = {"Car": "car", "Pedestrian": "person"}
KITTI_IGNORED_FOR_ALL = frozenset({"DontCare", "Van", "Truck", "Tram", "Misc", "Cyclist", "Person_sitting"})
KITTI_MIN_HEIGHT = 25.0
KITTI_MAX_OCCLUSION = 1
KITTI_MAX_TRUNCATION = 0.30
COCO_LISTS = ("images", "annotations", "categories")


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


def _image_size(path: Path) -> tuple:
    image = read_image(path)[1]
    return int(image.shape[1]), int(image.shape[0])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LeanEyeError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise LeanEyeError(f"{path}: not UTF-8 text (byte {exc.start}); expected a text file") from None
    except OSError as exc:
        raise LeanEyeError(f"{path}: cannot read ({exc.strerror})") from None


def kitti_ground_truth(kitti_dir: Path | str) -> GroundTruth:
    """KITTI label_2 files (image_2/ + label_2/) under the car/person "moderate" rule of EVAL.md."""
    root = Path(kitti_dir)
    images_dir, labels_dir = root / "image_2", root / "label_2"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise LeanEyeError(f"{root}: expected a KITTI folder with image_2/ and label_2/")
    images = {path.stem: path for path in image_files(images_dir)}
    truth = []
    for image_id, (stem, image_path) in enumerate(images.items()):
        label_path = labels_dir / f"{stem}.txt"
        if not label_path.is_file():
            raise LeanEyeError(f"{label_path}: missing label file for {image_path.name}")
        boxes, names, ignore, ignore_all = [], [], [], []
        for line_no, line in enumerate(_read_text(label_path).splitlines(), 1):
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
    expected = f"{path}: expected COCO JSON, an object with lists images, annotations and categories (id, name)"
    try:
        data = json.loads(_read_text(path))
    except ValueError as exc:
        raise LeanEyeError(f"{expected}; not JSON at line {getattr(exc, 'lineno', '?')}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in COCO_LISTS):
        raise LeanEyeError(expected)
    image_entries, annotations = data["images"], data["annotations"]
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, ValueError, TypeError):
        raise LeanEyeError(expected) from None
    by_image: dict = {}
    for number, ann in enumerate(annotations, 1):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            name = categories[int(ann["category_id"])]
            ignored = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
            by_image.setdefault(int(ann["image_id"]), []).append(([x, y, x + w, y + h], name, ignored))
        except (KeyError, ValueError, TypeError, AttributeError):
            which = ann.get("id", f"#{number}") if isinstance(ann, dict) else f"#{number}"
            raise LeanEyeError(
                f"{path}: annotation {which}: expected an object with image_id, known category_id and bbox [x, y, w, h]"
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
        except (KeyError, ValueError, TypeError):  # TypeError: an entry that is not an object
            raise LeanEyeError(f"{path}: image entry {entry!r:.80}: expected id, file_name, width, height") from None
    if by_image:
        raise LeanEyeError(f"{path}: annotations refer to unknown image ids {sorted(by_image)[:5]}")
    return GroundTruth(truth, tuple(categories[k] for k in sorted(categories)))
