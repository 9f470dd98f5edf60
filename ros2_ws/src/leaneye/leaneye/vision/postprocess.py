"""Network outputs into detections in frame pixels: decode, NMS, undo the letterbox. No backend.

The decoder is built once per engine and reads only the rows of the few candidates above the
score threshold; NMS is OpenCV's compiled loop. The same Postprocessor serves the runtime
(`leaneye.detector.Detector`), the offline evaluation of a PyTorch model and replay's scoring run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engine import Manifest
from ..errors import LeanEyeError
from .decoders import DECODERS, DecodeParams
from .letterbox import LetterboxTransform
from .nms import nms


@dataclass(frozen=True)
class DetectionSettings:
    """What a detector keeps: score threshold, NMS IoU threshold, at most so many per frame."""

    conf: float = 0.25
    iou: float = 0.45
    max_detections: int = 300
    class_agnostic: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise LeanEyeError(f"conf: expected a score threshold in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise LeanEyeError(f"iou: expected an NMS IoU threshold in [0, 1], got {self.iou}")
        if self.max_detections < 1:
            raise LeanEyeError(f"max_detections: expected a positive number, got {self.max_detections}")


DEFAULT_SETTINGS = DetectionSettings()


class NonFiniteOutputs(LeanEyeError):
    """The model gave NaN or infinite values; the caller adds which model and which frame."""


class Postprocessor:
    """An engine's decoder at given settings: `run(outputs, transform, image_size)` per frame."""

    def __init__(self, manifest: Manifest, settings: DetectionSettings = DEFAULT_SETTINGS):
        self.settings = settings
        self.class_names = manifest.class_names
        self.decoder = DECODERS[manifest.decoder]
        params = {k: tuple(v) for k, v in manifest.decoder_params.items()}  # strides
        self.decode = self.decoder.build(
            DecodeParams(
                input_size=manifest.input.size,
                num_classes=len(manifest.class_names),
                score_threshold=settings.conf,
                **params,
            )
        )

    def run(self, outputs: list, transform: LetterboxTransform, image_size: tuple[int, int]):
        """Decode, suppress and map back to frame pixels: (boxes, scores, class_ids)."""
        boxes, scores, class_ids = self.decode(outputs)
        if not len(scores):
            return boxes, scores, class_ids
        # NaN scores never pass the threshold; a NaN box or an infinite score would reach the output.
        # One sum each is the cheapest test: any NaN or infinity makes it non-finite.
        if not math.isfinite(boxes.sum() + scores.sum()):
            bad = int((~(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))).sum())
            raise NonFiniteOutputs(
                f"the model's outputs give NaN or infinite boxes or scores ({bad} of {len(scores)} candidates)"
            )
        settings = self.settings
        if self.decoder.runs_nms:
            keep = nms(
                boxes,
                scores,
                class_ids,
                settings.iou,
                class_agnostic=settings.class_agnostic,
                max_detections=settings.max_detections,
            )
        else:
            keep = np.argsort(-scores, kind="stable")[: settings.max_detections]
        return transform.to_original(boxes.take(keep, axis=0), image_size), scores.take(keep), class_ids.take(keep)
