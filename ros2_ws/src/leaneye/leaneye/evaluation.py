"""Accuracy by the project's evaluation protocols (shared EVAL.md): COCO bbox mAP with ignore regions,
bootstrap intervals over images, paired differences, and label-free agreement between two models.

Ground truth and detections are plain data (numpy arrays and class names), so the training loop, the
`leaneye eval` command and tests all score the same way. pycocotools does the matching; it is imported
only inside the functions that need it, because a vehicle may run without the "eval" extra.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import LeanEyeError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

# KITTI-2D car/person, "moderate" (EVAL.md).
KITTI_SCORED = {"Car": "car", "Pedestrian": "person"}
KITTI_IGNORED_FOR_ALL = frozenset({"DontCare", "Van", "Truck", "Tram", "Misc", "Cyclist", "Person_sitting"})
KITTI_MIN_HEIGHT = 25.0
KITTI_MAX_OCCLUSION = 1
KITTI_MAX_TRUNCATION = 0.30

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
MAX_DETECTIONS = 100
# COCO's object-size buckets (pixel area), the order pycocotools uses after "all".
SIZE_LABELS = ("small", "medium", "large")
ALL_AREAS = [0.0, 1e10]
SIZE_AREAS = [[0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]]


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
        return sum(int(np.sum([(name in scored) and not ign for name, ign in zip(im.class_names, im.ignore)]))
                   for im in self.images)


@dataclass
class ImageDetections:
    """One image's detections: boxes x1, y1, x2, y2 in original image pixels, scores, one class name per box."""

    boxes: np.ndarray
    scores: np.ndarray
    class_names: tuple

    @classmethod
    def from_class_ids(cls, boxes, scores, class_ids, names: Sequence[str]) -> "ImageDetections":
        """From a detector's class indices and its full list of class names."""
        return cls(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64).reshape(-1),
                   tuple(names[int(i)] for i in np.asarray(class_ids).reshape(-1)))

    @classmethod
    def from_truth(cls, image: ImageTruth, score: float = 1.0) -> "ImageDetections":
        """The image's objects (ignore regions left out) as detections: a perfect detector, for checks."""
        keep = ~image.ignore
        return cls(image.boxes[keep], np.full(int(keep.sum()), score), tuple(np.asarray(image.class_names, dtype=object)[keep]))

    def __len__(self) -> int:
        return len(self.scores)


# ----------------------------------------------------------------------------------------------
# Ground-truth loaders


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
                raise LeanEyeError(f"{label_path}:{line_no}: expected 'class truncation occlusion alpha x1 y1 x2 y2 ...'") from None
            if len(box) != 4:
                raise LeanEyeError(f"{label_path}:{line_no}: expected 'class truncation occlusion alpha x1 y1 x2 y2 ...'")
            if kind in KITTI_SCORED:
                moderate = (box[3] - box[1] >= KITTI_MIN_HEIGHT and occlusion <= KITTI_MAX_OCCLUSION
                            and truncation <= KITTI_MAX_TRUNCATION)
                boxes.append(box)
                names.append(KITTI_SCORED[kind])
                ignore.append(not moderate)
            elif kind in KITTI_IGNORED_FOR_ALL:
                ignore_all.append(box)
            else:
                raise LeanEyeError(f"{label_path}:{line_no}: unknown KITTI class {kind!r}")
        width, height = _image_size(image_path)
        truth.append(ImageTruth(image_id, image_path.name, width, height, _boxes(boxes, str(label_path)), tuple(names),
                                np.array(ignore, dtype=bool), _boxes(ignore_all, str(label_path))))
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
            raise LeanEyeError(f"{path}: annotation {ann.get('id', '?')}: expected image_id, known category_id and bbox [x, y, w, h]") from None
    truth = []
    for entry in image_entries:
        try:
            image_id = int(entry["id"])
            anns = by_image.pop(image_id, [])
            truth.append(ImageTruth(image_id, str(entry["file_name"]), int(entry["width"]), int(entry["height"]),
                                    _boxes([a[0] for a in anns], str(path)), tuple(a[1] for a in anns),
                                    np.array([a[2] for a in anns], dtype=bool)))
        except (KeyError, ValueError, TypeError):
            raise LeanEyeError(f"{path}: image entry {entry!r:.80}: expected id, file_name, width, height") from None
    if by_image:
        raise LeanEyeError(f"{path}: annotations refer to unknown image ids {sorted(by_image)[:5]}")
    return GroundTruth(truth, tuple(categories[k] for k in sorted(categories)))


# ----------------------------------------------------------------------------------------------
# COCO matching


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on every call; the caller's output stays readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _xywh(box: np.ndarray) -> list:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _coco_objects(ground_truth: GroundTruth, detections: Mapping[int, ImageDetections], classes: Sequence[str]):
    """pycocotools COCO objects for the truth and the detections, ignore regions as iscrowd=1."""
    from pycocotools.coco import COCO

    category_ids = {name: k + 1 for k, name in enumerate(classes)}
    known_ids = {im.image_id for im in ground_truth.images}
    if len(known_ids) != len(ground_truth.images):
        raise LeanEyeError("ground truth: image ids must be unique")
    unknown = set(detections) - known_ids
    if unknown:
        raise LeanEyeError(f"detections: image ids {sorted(unknown)[:5]} are not in the ground truth")
    gt_anns, dt_anns = [], []

    def add(anns, image_id, box, category_id, **extra):
        xywh = _xywh(box)
        # Annotation id 0 would read as "unmatched" inside COCOeval: ids start at 1.
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category_id, "bbox": xywh,
                     "area": xywh[2] * xywh[3], **extra})

    for im in ground_truth.images:
        for box, name, ignored in zip(im.boxes, im.class_names, im.ignore):
            if name in category_ids:
                add(gt_anns, im.image_id, box, category_ids[name], iscrowd=int(ignored))
        for box in im.ignore_all:
            for category_id in category_ids.values():
                add(gt_anns, im.image_id, box, category_id, iscrowd=1)
        dets = detections.get(im.image_id)
        if dets is None:
            continue
        for box, score, name in zip(dets.boxes, dets.scores, dets.class_names):
            if name in category_ids:
                add(dt_anns, im.image_id, box, category_ids[name], iscrowd=0, score=float(score))
    images = [{"id": im.image_id, "width": im.width, "height": im.height, "file_name": im.file_name}
              for im in ground_truth.images]
    categories = [{"id": i, "name": n} for n, i in category_ids.items()]
    cocos = []
    with _quiet():
        for anns in (gt_anns, dt_anns):
            coco = COCO()
            coco.dataset = {"images": images, "annotations": anns, "categories": categories}
            coco.createIndex()
            cocos.append(coco)
    return cocos


def _evaluated(ground_truth: GroundTruth, detections, classes: Sequence[str], area_ranges: bool):
    """A COCOeval whose per-image matching (evaluate) is done: the expensive part, run once."""
    from pycocotools.cocoeval import COCOeval

    coco_gt, coco_dt = _coco_objects(ground_truth, detections, classes)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.maxDets = [MAX_DETECTIONS]
    ev.params.areaRng = [ALL_AREAS] + (SIZE_AREAS if area_ranges else [])
    ev.params.areaRngLbl = ["all"] + (list(SIZE_LABELS) if area_ranges else [])
    with _quiet():
        ev.evaluate()
    return ev


def _mean_valid(values: np.ndarray) -> float:
    """pycocotools' rule: average over classes that have objects (AP -1 marks a class without any)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _class_aps(precision: np.ndarray, area_index: int = 0) -> tuple:
    """Per-class AP50-95 and AP50 from COCOeval precision [T, R, K, A, M]; -1 where a class has no objects."""
    p = precision[:, :, :, area_index, 0]
    present = (p > -1).all(axis=(0, 1))
    ap50_95 = np.where(present, p.clip(min=0).mean(axis=(0, 1)), -1.0)
    ap50 = np.where(present, p[0].clip(min=0).mean(axis=0), -1.0)
    return ap50_95, ap50


class _Resampler:
    """Scores resamples of the images without re-matching them: the per-image results of evaluate() are
    reused and only the accumulation runs again.

    The accumulation is COCOeval.accumulate's, for the "all" area range, written with numpy array
    operations: pycocotools walks every detection in Python, which made 1000 resamples of 300 images
    take about a minute. tests/test_evaluation.py checks that both give the same mAP.
    """

    def __init__(self, ev):
        p = ev.params
        n_images, n_areas = len(p.imgIds), len(p.areaRng)
        self.recall_thresholds = np.asarray(p.recThrs)
        # Per class, per image (in evaluate()'s image order): scores, matched [T, D], ignored [T, D], objects.
        self.per_class = []
        for k in range(len(p.catIds)):
            entries = ev.evalImgs[k * n_areas * n_images: k * n_areas * n_images + n_images]  # area range "all"
            self.per_class.append([None if e is None else (np.asarray(e["dtScores"], dtype=np.float64),
                                                           np.asarray(e["dtMatches"]) > 0, np.asarray(e["dtIgnore"], dtype=bool),
                                                           int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)))
                                   for e in entries])

    def _class_ap(self, images: list) -> np.ndarray | None:
        """AP at each IoU threshold, or None when these images hold no object of the class."""
        images = [e for e in images if e is not None]
        n_objects = sum(e[3] for e in images)
        if n_objects == 0:
            return None
        scores = np.concatenate([e[0] for e in images])
        n_thresholds = len(IOU_THRESHOLDS)
        if scores.size == 0:
            return np.zeros(n_thresholds)
        order = np.argsort(-scores, kind="mergesort")  # pycocotools' order, ties included
        matched = np.concatenate([e[1] for e in images], axis=1)[:, order]
        ignored = np.concatenate([e[2] for e in images], axis=1)[:, order]
        tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
        fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
        recall = tp / n_objects
        precision = tp / (fp + tp + np.spacing(1))
        # Interpolated precision: the best precision at this recall or any higher one.
        precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
        ap = np.empty(n_thresholds)
        for t in range(n_thresholds):
            at = np.searchsorted(recall[t], self.recall_thresholds, side="left")
            reached = at < scores.size
            ap[t] = np.where(reached, precision[t, np.minimum(at, scores.size - 1)], 0.0).mean()
        return ap

    def score(self, positions: np.ndarray) -> tuple:
        """(mAP50-95, mAP50) of the images at `positions` (repeats allowed) of evaluate()'s image order."""
        aps = [self._class_ap([images[i] for i in positions]) for images in self.per_class]
        aps = [ap for ap in aps if ap is not None]
        if not aps:
            return float("nan"), float("nan")
        return float(np.mean([ap.mean() for ap in aps])), float(np.mean([ap[0] for ap in aps]))


def _percentile_interval(samples: np.ndarray) -> tuple:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (float("nan"), float("nan"))
    low, high = np.percentile(samples, [2.5, 97.5])
    return (float(low), float(high))


def _fmt(value: float) -> str:
    return "  n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _fmt_interval(interval) -> str:
    return "" if interval is None else f"  (95 % {_fmt(interval[0])}-{_fmt(interval[1])})"


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    ap50_per_class: dict  # class name -> AP50 (nan when the class has no objects here)
    ap_by_size: dict  # "small"/"medium"/"large" -> mAP50-95 (empty without area ranges)
    num_images: int
    num_objects: int
    map50_interval: tuple | None  # 95 % bootstrap interval over images; None without bootstrap
    map50_95_interval: tuple | None
    bootstrap: int

    def to_dict(self) -> dict:
        def clean(value):
            if isinstance(value, float):
                return None if math.isnan(value) else value
            if isinstance(value, (tuple, list)):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean({"mAP50-95": self.map50_95, "mAP50": self.map50, "AP50_per_class": self.ap50_per_class,
                      "AP_by_size": self.ap_by_size, "images": self.num_images, "objects": self.num_objects,
                      "mAP50_interval95": self.map50_interval, "mAP50-95_interval95": self.map50_95_interval,
                      "bootstrap_resamples": self.bootstrap})

    def format(self) -> str:
        lines = [f"{self.num_images} images, {self.num_objects} objects",
                 f"mAP50     {_fmt(self.map50)}{_fmt_interval(self.map50_interval)}",
                 f"mAP50-95  {_fmt(self.map50_95)}{_fmt_interval(self.map50_95_interval)}"]
        lines += [f"AP50 {name:<14}{_fmt(ap)}" for name, ap in self.ap50_per_class.items()]
        lines += [f"mAP50-95 {size:<10}{_fmt(ap)}" for size, ap in self.ap_by_size.items()]
        if self.bootstrap:
            lines.append(f"(intervals: {self.bootstrap} bootstrap resamples of the images)")
        return "\n".join(lines)


def _scored_classes(ground_truth: GroundTruth, classes) -> tuple:
    if classes is None:
        return tuple(ground_truth.classes)
    unknown = [c for c in classes if c not in ground_truth.classes]
    if unknown:
        raise LeanEyeError(f"classes: {unknown} are not classes of the ground truth {list(ground_truth.classes)}")
    return tuple(classes)


def evaluate(ground_truth: GroundTruth, detections: Mapping[int, ImageDetections], classes: Sequence[str] | None = None,
             bootstrap: int = 1000, seed: int = 0, area_ranges: bool = True) -> EvalResult:
    """COCO bbox mAP (maxDets 100) of `detections` (image id -> ImageDetections; a missing id = no detections).

    Detections of classes not scored are dropped. `bootstrap` resamples of the images give the 95 % intervals
    (0 = none).
    """
    classes = _scored_classes(ground_truth, classes)
    if not ground_truth.images:
        raise LeanEyeError("ground truth: no images to evaluate")
    ev = _evaluated(ground_truth, detections, classes, area_ranges)
    with _quiet():
        ev.accumulate()
    precision = ev.eval["precision"]
    ap50_95, ap50 = _class_aps(precision)
    ap_by_size = {label: _mean_valid(_class_aps(precision, a + 1)[0]) for a, label in enumerate(SIZE_LABELS)} if area_ranges else {}
    map50_interval = map50_95_interval = None
    if bootstrap > 0:
        resampler = _Resampler(ev)
        rng = np.random.default_rng(seed)
        n = len(ground_truth.images)
        samples = np.array([resampler.score(rng.integers(0, n, n)) for _ in range(bootstrap)])
        map50_95_interval, map50_interval = _percentile_interval(samples[:, 0]), _percentile_interval(samples[:, 1])
    return EvalResult(
        map50_95=_mean_valid(ap50_95), map50=_mean_valid(ap50),
        ap50_per_class={name: (float(ap) if ap > -1 else float("nan")) for name, ap in zip(classes, ap50)},
        ap_by_size=ap_by_size, num_images=len(ground_truth.images), num_objects=ground_truth.num_objects(classes),
        map50_interval=map50_interval, map50_95_interval=map50_95_interval, bootstrap=max(bootstrap, 0))


@dataclass
class PairedDifference:
    """candidate minus reference on the same images; intervals from resampling the images once for both."""

    reference: dict  # {"mAP50": .., "mAP50-95": ..}
    candidate: dict
    difference: dict
    interval: dict  # metric -> (low, high) of the difference
    num_images: int
    bootstrap: int

    def to_dict(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "difference": self.difference,
                "interval95": {k: list(v) for k, v in self.interval.items()}, "images": self.num_images,
                "bootstrap_resamples": self.bootstrap}

    def format(self) -> str:
        lines = [f"{'':10}{'reference':>10}{'candidate':>10}{'difference':>11}   95 % interval of the difference"]
        for metric in ("mAP50", "mAP50-95"):
            low, high = self.interval[metric]
            lines.append(f"{metric:<10}{self.reference[metric]:>10.3f}{self.candidate[metric]:>10.3f}"
                         f"{self.difference[metric]:>+11.3f}   {low:+.3f} to {high:+.3f}")
        lines.append(f"({self.num_images} images, {self.bootstrap} paired bootstrap resamples)")
        return "\n".join(lines)


def paired_difference(ground_truth: GroundTruth, reference: Mapping[int, ImageDetections],
                      candidate: Mapping[int, ImageDetections], classes: Sequence[str] | None = None,
                      bootstrap: int = 1000, seed: int = 0) -> PairedDifference:
    """How much `candidate` (an INT8 engine, a student) gains or loses against `reference` on the same images."""
    classes = _scored_classes(ground_truth, classes)
    if not ground_truth.images:
        raise LeanEyeError("ground truth: no images to evaluate")
    if bootstrap < 1:
        raise LeanEyeError("bootstrap: the paired difference needs at least 1 resample")
    resamplers = [_Resampler(_evaluated(ground_truth, dets, classes, area_ranges=False)) for dets in (reference, candidate)]
    n = len(ground_truth.images)
    point = [r.score(np.arange(n)) for r in resamplers]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(bootstrap):
        positions = rng.integers(0, n, n)
        ref, cand = (r.score(positions) for r in resamplers)
        diffs.append((cand[0] - ref[0], cand[1] - ref[1]))
    diffs = np.array(diffs)
    names = ("mAP50-95", "mAP50")
    return PairedDifference(
        reference=dict(zip(names, point[0])), candidate=dict(zip(names, point[1])),
        difference={m: point[1][i] - point[0][i] for i, m in enumerate(names)},
        interval={m: _percentile_interval(diffs[:, i]) for i, m in enumerate(names)},
        num_images=n, bootstrap=bootstrap)


# ----------------------------------------------------------------------------------------------
# Agreement without labels


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1, y1, x2, y2 boxes."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy_match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """IoUs of the pairs matched greedily: candidates (rows, highest score first) each take their best free reference."""
    matched = []
    free = np.ones(iou.shape[1], dtype=bool)
    for row in iou:
        options = np.where(free & (row >= threshold), row, -1.0)
        best = int(np.argmax(options)) if options.size else 0
        if options.size and options[best] >= threshold:
            free[best] = False
            matched.append(options[best])
    return np.array(matched)


@dataclass
class Agreement:
    per_class: dict  # class -> {"f1", "precision", "recall", "mean_iou", "matched", "reference", "candidate"}
    mean_f1: float  # over classes present in either model's detections
    mean_iou: float  # over all matched boxes
    num_images: int

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {"per_class": {c: {k: clean(v) for k, v in s.items()} for c, s in self.per_class.items()},
                "mean_F1": clean(self.mean_f1), "mean_IoU": clean(self.mean_iou), "images": self.num_images}

    def format(self) -> str:
        lines = [f"{'class':<14}{'F1':>7}{'mean IoU':>10}{'matched':>9}{'reference':>11}{'candidate':>11}"]
        for name, s in self.per_class.items():
            lines.append(f"{name:<14}{_fmt(s['f1']):>7}{_fmt(s['mean_iou']):>10}{s['matched']:>9}{s['reference']:>11}{s['candidate']:>11}")
        lines.append(f"mean F1 {_fmt(self.mean_f1)}, mean IoU of matched boxes {_fmt(self.mean_iou)} over {self.num_images} frames")
        return "\n".join(lines)


def agreement(reference_dets: Mapping, candidate_dets: Mapping, iou: float = 0.5, score_threshold: float = 0.3) -> Agreement:
    """F1 of the candidate's detections against the reference's (per class) and mean IoU of matched boxes.

    Both are keyed by frame (any hashable); a frame missing from one side counts as no detections there.
    """
    stats: dict = {}
    matched_ious = []
    frames = set(reference_dets) | set(candidate_dets)
    for frame in frames:
        sides = []
        for dets in (reference_dets.get(frame), candidate_dets.get(frame)):
            if dets is None:
                sides.append((np.zeros((0, 4)), np.zeros(0), np.array([], dtype=object)))
                continue
            keep = np.asarray(dets.scores) >= score_threshold
            sides.append((np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4)[keep], np.asarray(dets.scores)[keep],
                          np.asarray(dets.class_names, dtype=object).reshape(-1)[keep]))
        (ref_boxes, _, ref_names), (cand_boxes, cand_scores, cand_names) = sides
        for name in set(ref_names.tolist()) | set(cand_names.tolist()):
            ref = ref_boxes[ref_names == name]
            in_class = cand_names == name
            order = np.argsort(-cand_scores[in_class], kind="stable")
            cand = cand_boxes[in_class][order]
            ious = _greedy_match(box_iou(cand, ref), iou)
            s = stats.setdefault(name, {"matched": 0, "reference": 0, "candidate": 0, "iou_sum": 0.0})
            s["matched"] += len(ious)
            s["reference"] += len(ref)
            s["candidate"] += len(cand)
            s["iou_sum"] += float(ious.sum())
            matched_ious.append(ious)
    per_class = {}
    for name in sorted(stats):
        s = stats[name]
        tp = s["matched"]
        per_class[name] = {
            "f1": 2 * tp / (s["reference"] + s["candidate"]),
            "precision": tp / s["candidate"] if s["candidate"] else float("nan"),
            "recall": tp / s["reference"] if s["reference"] else float("nan"),
            "mean_iou": s["iou_sum"] / tp if tp else float("nan"),
            "matched": tp, "reference": s["reference"], "candidate": s["candidate"]}
    all_ious = np.concatenate(matched_ious) if matched_ious else np.zeros(0)
    return Agreement(per_class,
                     mean_f1=float(np.mean([c["f1"] for c in per_class.values()])) if per_class else float("nan"),
                     mean_iou=float(all_ious.mean()) if all_ious.size else float("nan"), num_images=len(frames))
