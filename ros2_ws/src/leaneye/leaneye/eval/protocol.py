"""The evaluation protocol of shared/EVAL.md, written once: every scorer (`leaneye eval`, replay's
ground-truth scoring, training's held-out evaluation, the compression report) runs detection and
matching at these settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalProtocol:
    score_threshold: float = 0.001  # keep nearly every candidate: mAP integrates over all scores
    nms_iou: float = 0.65
    max_detections: int = 100  # per image, also pycocotools' maxDets
    bootstrap: int = 1000  # resamples of the images for the intervals
    interval: float = 0.95  # two-sided percentile interval

    @property
    def iou_thresholds(self) -> np.ndarray:
        """COCO's matching IoUs, 0.50:0.05:0.95."""
        return np.linspace(0.5, 0.95, 10)

    def detector_settings(self) -> dict:
        """Keyword arguments of `Detector` / `Detector.from_engine` that run a model by this protocol."""
        return {"conf": self.score_threshold, "iou": self.nms_iou, "max_detections": self.max_detections}

    def describe(self) -> str:
        return (
            f"shared/EVAL.md: score >= {self.score_threshold}, NMS IoU {self.nms_iou}, at most "
            f"{self.max_detections} per image, COCO mAP (pycocotools), {self.interval:.0%} bootstrap interval over images"
        )


EVAL_PROTOCOL = EvalProtocol()
