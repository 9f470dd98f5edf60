"""What a detector gives for one frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one frame; boxes are xyxy in the frame's pixels, clipped to it."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32, highest first
    class_ids: np.ndarray  # (N,) int64, indices into class_names
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    timings: dict = field(default_factory=dict)  # ms: preprocess, inference, postprocess

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> tuple[str, ...]:
        """The class name of each detection."""
        return tuple(self.class_names[i] for i in self.class_ids)

    def only(self, class_ids: frozenset[int]) -> Detections:
        """The detections of these classes alone (same timings)."""
        keep = np.isin(self.class_ids, list(class_ids))
        return Detections(
            self.boxes[keep], self.scores[keep], self.class_ids[keep], self.class_names, self.image_size, self.timings
        )
