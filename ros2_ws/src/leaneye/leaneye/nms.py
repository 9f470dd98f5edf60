"""Greedy non-maximum suppression in NumPy: no Python loop over candidates, one step per kept box.

Class-aware NMS shifts each class's boxes by its own offset so that boxes of different classes can
never overlap; one agnostic pass over the shifted boxes then suppresses within classes only.

Candidates are taken in score order in blocks: a block is first pruned by every box kept so far
(one IoU matrix), then resolved greedily with its own IoU matrix. Work stays near
O(kept x candidates) instead of O(candidates^2), and stops as soon as `max_detections` are kept.
"""
from __future__ import annotations

import numpy as np

# Candidates per block: large enough that matrix work dominates Python overhead, small enough
# that a block's IoU matrix (BLOCK^2) stays cheap when few candidates survive.
BLOCK = 256


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of (N, 4) xyxy boxes; inverted boxes count as empty."""
    sides = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
    return sides[:, 0] * sides[:, 1]


def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, areas_a: np.ndarray | None = None,
                 areas_b: np.ndarray | None = None) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes; pairs of empty boxes have IoU 0. Areas may be passed in
    when already known."""
    areas_a = box_areas(boxes_a) if areas_a is None else areas_a
    areas_b = box_areas(boxes_b) if areas_b is None else areas_b
    sides = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:]) - np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    np.clip(sides, 0, None, out=sides)
    inter = sides[..., 0] * sides[..., 1]
    union = areas_a[:, None] + areas_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        class_agnostic: bool = False, max_detections: int = 300) -> np.ndarray:
    """Indices of the boxes that survive greedy NMS, highest score first, at most `max_detections`.

    A box is suppressed by a higher-scoring kept box (of the same class unless `class_agnostic`)
    whose IoU with it is strictly greater than `iou_threshold`. Equal scores keep input order.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    if len(boxes) != len(scores) or len(class_ids) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes, {len(scores)} scores and {len(class_ids)} class ids differ in number")
    if len(boxes) <= 1 or max_detections <= 0:
        return np.zeros(min(len(boxes), max(max_detections, 0)), dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    if class_agnostic:
        ranked = boxes[order]
    else:
        # Offsets larger than any coordinate span put each class in its own region of the plane;
        # float64 keeps the shifted coordinates as exact as the originals.
        low = float(boxes.min())
        span = float(boxes.max()) - low + 1.0
        ranked = (boxes[order] - low).astype(np.float64) + class_ids[order, None].astype(np.float64) * span
    areas = box_areas(ranked)
    kept: list[int] = []  # positions in `ranked`
    for start in range(0, len(ranked), BLOCK):
        block, block_areas = ranked[start:start + BLOCK], areas[start:start + BLOCK]
        alive = np.ones(len(block), dtype=bool)
        if kept:
            alive &= ~(pairwise_iou(ranked[kept], block, areas[kept], block_areas) > iou_threshold).any(axis=0)
        overlaps = pairwise_iou(block, block, block_areas, block_areas) > iou_threshold
        position = int(alive.argmax()) if alive.any() else len(block)
        while position < len(block) and len(kept) < max_detections:
            kept.append(start + position)
            # Rows only suppress later boxes; earlier ones were decided already.
            later = alive[position + 1:]
            later &= ~overlaps[position, position + 1:]
            position = position + 1 + int(later.argmax()) if later.any() else len(block)
        if len(kept) >= max_detections:
            break
    return order[kept].astype(np.int64)
