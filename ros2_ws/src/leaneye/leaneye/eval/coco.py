"""COCO-style mAP by shared/EVAL.md with pycocotools, and bootstrap intervals over images."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LeanEyeError
from .datasets import GroundTruth, ImageDetections
from .protocol import EVAL_PROTOCOL

# COCO's object-size buckets (pixel area), the order pycocotools uses after "all".
SIZE_LABELS = ("small", "medium", "large")
ALL_AREAS = [0.0, 1e10]
SIZE_AREAS = [[0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]]


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
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": xywh,
                "area": xywh[2] * xywh[3],
                **extra,
            }
        )

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
    images = [
        {"id": im.image_id, "width": im.width, "height": im.height, "file_name": im.file_name}
        for im in ground_truth.images
    ]
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
    ev.params.maxDets = [EVAL_PROTOCOL.max_detections]
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
            entries = ev.evalImgs[k * n_areas * n_images : k * n_areas * n_images + n_images]  # area range "all"
            self.per_class.append(
                [
                    None
                    if e is None
                    else (
                        np.asarray(e["dtScores"], dtype=np.float64),
                        np.asarray(e["dtMatches"]) > 0,
                        np.asarray(e["dtIgnore"], dtype=bool),
                        int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)),
                    )
                    for e in entries
                ]
            )

    def _class_ap(self, images: list) -> np.ndarray | None:
        """AP at each IoU threshold, or None when these images hold no object of the class."""
        images = [e for e in images if e is not None]
        n_objects = sum(e[3] for e in images)
        if n_objects == 0:
            return None
        scores = np.concatenate([e[0] for e in images])
        n_thresholds = len(EVAL_PROTOCOL.iou_thresholds)
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
    low, high = np.percentile(samples, [50 * (1 - EVAL_PROTOCOL.interval), 50 * (1 + EVAL_PROTOCOL.interval)])
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

        return clean(
            {
                "mAP50-95": self.map50_95,
                "mAP50": self.map50,
                "AP50_per_class": self.ap50_per_class,
                "AP_by_size": self.ap_by_size,
                "images": self.num_images,
                "objects": self.num_objects,
                "mAP50_interval95": self.map50_interval,
                "mAP50-95_interval95": self.map50_95_interval,
                "bootstrap_resamples": self.bootstrap,
            }
        )

    def format(self) -> str:
        lines = [
            f"{self.num_images} images, {self.num_objects} objects",
            f"mAP50     {_fmt(self.map50)}{_fmt_interval(self.map50_interval)}",
            f"mAP50-95  {_fmt(self.map50_95)}{_fmt_interval(self.map50_95_interval)}",
        ]
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


def evaluate(
    ground_truth: GroundTruth,
    detections: Mapping[int, ImageDetections],
    classes: Sequence[str] | None = None,
    bootstrap: int = EVAL_PROTOCOL.bootstrap,
    seed: int = 0,
    area_ranges: bool = True,
) -> EvalResult:
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
    ap_by_size = (
        {label: _mean_valid(_class_aps(precision, a + 1)[0]) for a, label in enumerate(SIZE_LABELS)}
        if area_ranges
        else {}
    )
    map50_interval = map50_95_interval = None
    if bootstrap > 0:
        resampler = _Resampler(ev)
        rng = np.random.default_rng(seed)
        n = len(ground_truth.images)
        samples = np.array([resampler.score(rng.integers(0, n, n)) for _ in range(bootstrap)])
        map50_95_interval, map50_interval = _percentile_interval(samples[:, 0]), _percentile_interval(samples[:, 1])
    return EvalResult(
        map50_95=_mean_valid(ap50_95),
        map50=_mean_valid(ap50),
        ap50_per_class={name: (float(ap) if ap > -1 else float("nan")) for name, ap in zip(classes, ap50)},
        ap_by_size=ap_by_size,
        num_images=len(ground_truth.images),
        num_objects=ground_truth.num_objects(classes),
        map50_interval=map50_interval,
        map50_95_interval=map50_95_interval,
        bootstrap=max(bootstrap, 0),
    )
