"""Greedy non-maximum suppression in NumPy: no Python loop over candidates, one step per kept box.

Candidates are taken in score order in blocks: a block is first pruned by every box kept so far
(one IoU matrix), then resolved greedily with its own IoU matrix. Work stays near
O(kept x candidates) instead of O(candidates^2), and stops as soon as `max_detections` are kept.
Class-aware NMS masks each IoU matrix with "same class", so boxes of other classes never suppress.

IoUs are computed in float64, as exact as the float32 boxes allow. A detector calls this once per
frame, typically with a few dozen candidates, so the number of NumPy calls matters more than their
size: each kept box costs one comparison and one search.
"""
from __future__ import annotations

import numpy as np

# Candidates per block: large enough that matrix work dominates Python overhead, small enough
# that a block's IoU matrix (BLOCK^2) stays cheap when few candidates survive.
BLOCK = 256


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of (N, 4) xyxy boxes; inverted boxes count as empty."""
    sides = np.maximum(boxes[:, 2:] - boxes[:, :2], 0)
    return sides[:, 0] * sides[:, 1]


def overlaps_above(boxes_a: np.ndarray, areas_a: np.ndarray, boxes_b: np.ndarray, areas_b: np.ndarray,
                   iou_threshold: float) -> np.ndarray:
    """(len(a), len(b)) bool: IoU of the xyxy boxes > `iou_threshold` (in [0, 1]); empty pairs have IoU 0.

    IoU > t is tested as intersection > t * union, which needs no division and is False for two
    empty boxes (0 > 0) as their IoU of 0 requires.
    """
    sides = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:]) - np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    np.maximum(sides, 0, out=sides)
    inter = sides[..., 0] * sides[..., 1]
    union = areas_a[:, None] + areas_b[None, :] - inter
    return inter > union * iou_threshold


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        class_agnostic: bool = False, max_detections: int = 300) -> np.ndarray:
    """Indices of the boxes that survive greedy NMS, highest score first, at most `max_detections`.

    A box is suppressed by a higher-scoring kept box (of the same class unless `class_agnostic`)
    whose IoU with it is strictly greater than `iou_threshold`. Equal scores keep input order.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"nms: IoU threshold {iou_threshold} is outside [0, 1]")
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    boxes = np.asarray(boxes_xyxy).reshape(-1, 4)
    class_ids = np.asarray(class_ids).reshape(-1)
    if len(boxes) != len(scores) or len(class_ids) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes, {len(scores)} scores and {len(class_ids)} class ids differ in number")
    if len(boxes) <= 1 or max_detections <= 0:
        return np.zeros(min(len(boxes), max(max_detections, 0)), dtype=np.int64)
    order = (-scores).argsort(kind="stable")
    ranked = boxes.astype(np.float64).take(order, axis=0)
    ranked_classes = None if class_agnostic else class_ids.take(order)
    areas = box_areas(ranked)
    kept: list[int] = []  # positions in `ranked`
    for start in range(0, len(ranked), BLOCK):
        stop = min(start + BLOCK, len(ranked))
        block, block_areas = ranked[start:stop], areas[start:stop]
        # suppresses[i, j]: block box i, if kept, suppresses block box j
        suppresses = overlaps_above(block, block_areas, block, block_areas, iou_threshold)
        if ranked_classes is not None:
            block_classes = ranked_classes[start:stop]
            suppresses &= block_classes[:, None] == block_classes[None, :]
        if kept:
            by_kept = overlaps_above(ranked[kept], areas[kept], block, block_areas, iou_threshold)
            if ranked_classes is not None:
                by_kept &= ranked_classes[kept][:, None] == block_classes[None, :]
            alive = ~by_kept.any(axis=0)
        else:
            alive = np.empty(len(block), dtype=bool)
            alive.fill(True)
        position = int(alive.argmax())
        if not alive[position]:
            continue
        last = len(block) - 1
        while True:
            kept.append(start + position)
            if position == last or len(kept) == max_detections:
                break
            # Rows only suppress later boxes; earlier ones were decided already.
            later = alive[position + 1:]
            np.greater(later, suppresses[position, position + 1:], out=later)  # alive and not suppressed
            step = int(later.argmax())
            if not later[step]:
                break
            position += 1 + step
        if len(kept) == max_detections:
            break
    return order.take(kept).astype(np.int64, copy=False)
