"""The per-frame work of a LeanEye node, of `leaneye replay` and of benchmarks: a decoded frame in,
its vision_msgs/msg/Detection2DArray and leaneye_msgs/msg/FrameLatency out.

    processor = FrameProcessor(detector, msgs.GeneratedTypes())     # a ROS 2 node: rclpy's classes
    processor = FrameProcessor(detector, msgs.bag_types())           # a bag: rosbags' classes
    frame = processor.process(image_bgr, image_msg.header, decode_ms)
    publish(frame.message); publish(processor.latency_msg(image_msg.header, frame.latency))

Nothing here imports ROS or rosbags: messages are built from fields by `leaneye.msgs` with the
classes of the `types` provider given. Docs: docs/pipeline.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import msgs
from .errors import LeanEyeError
from .latency import FrameLatency
from .vision.detections import Detections
from .vision.postprocess import Postprocessor

CLASS_ID_MODES = ("index", "name")  # hypothesis.class_id: the class index as a string, or the class name


def check_class_id(class_id: str) -> None:
    if class_id not in CLASS_ID_MODES:
        raise LeanEyeError(f"class_id: expected one of {', '.join(CLASS_ID_MODES)}, got '{class_id}'")


@dataclass(frozen=True)
class ProcessedFrame:
    published: Detections  # at the detector's (deployment) settings: what `message` holds
    scored: Detections | None  # the same backend outputs at the scoring postprocessor's settings, if any
    message: Any  # vision_msgs/msg/Detection2DArray with the image's header
    latency: FrameLatency  # of the deployment path only (see FrameLatency.msg)


class FrameProcessor:
    """Detect in one frame and build its messages from the classes of `types`.

    `scoring`, when given, is a second postprocessor (e.g. at the evaluation protocol's settings)
    run on the same backend outputs after the message is built: no second inference, and the
    published detections and latency are exactly those of a run without it.

    `classes` (names) keeps only those classes in what is published; None or empty keeps all. The
    detector node changes `class_id` and `classes` while it runs (`set_classes`); one frame sees
    either the old or the new value.
    """

    def __init__(
        self,
        detector,
        types: msgs.MessageTypes,
        class_id: str = "index",
        scoring: Postprocessor | None = None,
        classes: Sequence[str] | None = None,
    ):
        check_class_id(class_id)
        self.detector = detector
        self.types = types
        self.class_id = class_id
        self.scoring = scoring
        self.class_filter: frozenset[int] | None = None
        self.set_classes(classes)

    def set_classes(self, classes: Sequence[str] | None) -> None:
        if not classes:
            self.class_filter = None
            return
        names = self.detector.class_names
        unknown = [name for name in classes if name not in names]
        if unknown:
            raise LeanEyeError(f"classes: {', '.join(unknown)} not among the engine's classes ({', '.join(names)})")
        self.class_filter = frozenset(names.index(name) for name in classes)

    def label_info(self, header: Any) -> Any:
        """vision_msgs/msg/LabelInfo: the engine's classes, threshold = the published score threshold."""
        return msgs.label_info_msg(
            header, self.detector.class_names, threshold=self.detector.settings.conf, types=self.types
        )

    def latency_msg(self, header: Any, latency: FrameLatency) -> Any:
        return msgs.frame_latency_msg(header, latency, types=self.types)

    def class_id_strings(self, detections: Detections) -> list[str]:
        if self.class_id == "name":
            return list(detections.names)
        return [str(int(index)) for index in detections.class_ids]

    def process(self, image: np.ndarray, header: Any, decode_ms: float = 0.0) -> ProcessedFrame:
        """Detect in a BGR frame; `decode_ms` is what turning the image message into pixels took."""
        started = time.perf_counter()
        published = self.detector.detect(image)
        class_filter = self.class_filter
        if class_filter is not None:
            published = published.only(class_filter)
        message = msgs.detection_array_msg(
            header, published.boxes, published.scores, self.class_id_strings(published), types=self.types
        )
        total_ms = decode_ms + (time.perf_counter() - started) * 1e3
        latency = FrameLatency(
            decode_ms=decode_ms,
            preprocess_ms=published.timings["preprocess"],
            inference_ms=published.timings["inference"],
            postprocess_ms=published.timings["postprocess"],
            total_ms=total_ms,
            num_detections=len(published),
        )
        scored = self.detector.redetect(self.scoring) if self.scoring is not None else None
        return ProcessedFrame(published, scored, message, latency)
