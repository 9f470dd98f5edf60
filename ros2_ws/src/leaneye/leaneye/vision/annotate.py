"""Detections drawn on the frame (the detector node's ~/debug_image)."""

from __future__ import annotations

import cv2
import numpy as np

from .detections import Detections

# One colour per class index, BGR; distinct enough for a handful of classes, then repeating.
_COLOURS = ((0, 200, 255), (255, 120, 0), (0, 220, 0), (220, 0, 220), (255, 255, 0), (0, 0, 255), (128, 128, 255))


def draw_detections(image: np.ndarray, detections: Detections) -> np.ndarray:
    """A copy of the BGR `image` with each box and its 'class score' label."""
    canvas = np.ascontiguousarray(image).copy()
    for (x1, y1, x2, y2), score, class_index, name in zip(
        detections.boxes.round().astype(int).tolist(),
        detections.scores.tolist(),
        detections.class_ids.tolist(),
        detections.names,
    ):
        colour = _COLOURS[class_index % len(_COLOURS)]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        label = f"{name} {score:.2f}"
        (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - height - baseline, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + width, top + height + baseline), colour, cv2.FILLED)
        cv2.putText(canvas, label, (x1, top + height), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
