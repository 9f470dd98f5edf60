"""Comparing two models on the same frames: paired bootstrap of the mAP difference, and agreement
of their detections without labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LeanEyeError
from .coco import _evaluated, _fmt, _percentile_interval, _Resampler, _scored_classes
from .datasets import GroundTruth, ImageDetections
from .protocol import EVAL_PROTOCOL


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
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "difference": self.difference,
            "interval95": {k: list(v) for k, v in self.interval.items()},
            "images": self.num_images,
            "bootstrap_resamples": self.bootstrap,
        }

    def format(self) -> str:
        lines = [f"{'':10}{'reference':>10}{'candidate':>10}{'difference':>11}   95 % interval of the difference"]
        for metric in ("mAP50", "mAP50-95"):
            low, high = self.interval[metric]
            lines.append(
                f"{metric:<10}{self.reference[metric]:>10.3f}{self.candidate[metric]:>10.3f}"
                f"{self.difference[metric]:>+11.3f}   {low:+.3f} to {high:+.3f}"
            )
        lines.append(f"({self.num_images} images, {self.bootstrap} paired bootstrap resamples)")
        return "\n".join(lines)


def paired_difference(
    ground_truth: GroundTruth,
    reference: Mapping[int, ImageDetections],
    candidate: Mapping[int, ImageDetections],
    classes: Sequence[str] | None = None,
    bootstrap: int = EVAL_PROTOCOL.bootstrap,
    seed: int = 0,
) -> PairedDifference:
    """How much `candidate` (an INT8 engine, a student) gains or loses against `reference` on the same images."""
    classes = _scored_classes(ground_truth, classes)
    if not ground_truth.images:
        raise LeanEyeError("ground truth: no images to evaluate")
    if bootstrap < 1:
        raise LeanEyeError("bootstrap: the paired difference needs at least 1 resample")
    resamplers = [
        _Resampler(_evaluated(ground_truth, dets, classes, area_ranges=False)) for dets in (reference, candidate)
    ]
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
        reference=dict(zip(names, point[0])),
        candidate=dict(zip(names, point[1])),
        difference={m: point[1][i] - point[0][i] for i, m in enumerate(names)},
        interval={m: _percentile_interval(diffs[:, i]) for i, m in enumerate(names)},
        num_images=n,
        bootstrap=bootstrap,
    )


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

        return {
            "per_class": {c: {k: clean(v) for k, v in s.items()} for c, s in self.per_class.items()},
            "mean_F1": clean(self.mean_f1),
            "mean_IoU": clean(self.mean_iou),
            "images": self.num_images,
        }

    def format(self) -> str:
        lines = [f"{'class':<14}{'F1':>7}{'mean IoU':>10}{'matched':>9}{'reference':>11}{'candidate':>11}"]
        for name, s in self.per_class.items():
            lines.append(
                f"{name:<14}{_fmt(s['f1']):>7}{_fmt(s['mean_iou']):>10}{s['matched']:>9}{s['reference']:>11}{s['candidate']:>11}"
            )
        lines.append(
            f"mean F1 {_fmt(self.mean_f1)}, mean IoU of matched boxes {_fmt(self.mean_iou)} over {self.num_images} frames"
        )
        return "\n".join(lines)


def agreement(
    reference_dets: Mapping, candidate_dets: Mapping, iou: float = 0.5, score_threshold: float = 0.3
) -> Agreement:
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
            sides.append(
                (
                    np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4)[keep],
                    np.asarray(dets.scores)[keep],
                    np.asarray(dets.class_names, dtype=object).reshape(-1)[keep],
                )
            )
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
            "matched": tp,
            "reference": s["reference"],
            "candidate": s["candidate"],
        }
    all_ious = np.concatenate(matched_ious) if matched_ious else np.zeros(0)
    return Agreement(
        per_class,
        mean_f1=float(np.mean([c["f1"] for c in per_class.values()])) if per_class else float("nan"),
        mean_iou=float(all_ious.mean()) if all_ious.size else float("nan"),
        num_images=len(frames),
    )
