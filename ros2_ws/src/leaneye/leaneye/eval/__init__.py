"""Accuracy by shared/EVAL.md: datasets, COCO matching with bootstrap intervals, comparisons of two models.

pycocotools is imported only inside the functions that need it: a vehicle may run without the "eval" extra.
"""

from .coco import ALL_AREAS, SIZE_AREAS, SIZE_LABELS, EvalResult, evaluate
from .compare import Agreement, PairedDifference, agreement, box_iou, paired_difference
from .datasets import (
    KITTI_IGNORED_FOR_ALL,
    KITTI_MAX_OCCLUSION,
    KITTI_MAX_TRUNCATION,
    KITTI_MIN_HEIGHT,
    KITTI_SCORED,
    GroundTruth,
    ImageDetections,
    ImageTruth,
    coco_ground_truth,
    kitti_ground_truth,
)
from .protocol import EVAL_PROTOCOL, EvalProtocol

__all__ = [
    "EVAL_PROTOCOL",
    "EvalProtocol",
    "ALL_AREAS",
    "Agreement",
    "EvalResult",
    "GroundTruth",
    "ImageDetections",
    "ImageTruth",
    "KITTI_IGNORED_FOR_ALL",
    "KITTI_MAX_OCCLUSION",
    "KITTI_MAX_TRUNCATION",
    "KITTI_MIN_HEIGHT",
    "KITTI_SCORED",
    "PairedDifference",
    "SIZE_AREAS",
    "SIZE_LABELS",
    "agreement",
    "box_iou",
    "coco_ground_truth",
    "evaluate",
    "kitti_ground_truth",
    "paired_difference",
]
