"""Replay a recorded bag through an engine, frame by frame, as the vehicle would run it.

    report = replay_bag("drive_bag", "engines/default", ReplayOptions(topic="/camera/image_raw"), out="detections_bag")
    print(report.format())

Every image on the topic (sensor_msgs/Image or image_transport's `<topic>/compressed`) is decoded,
detected and turned into messages. A frame that does not decode is counted and skipped; a bag that
cannot be read, or that yields fewer messages than its metadata promises, is an error.

The output bag (rosbag2 folder, written whole or not at all) holds, each logged at the log time of
the image it came from:

    /leaneye/label_info  vision_msgs/msg/LabelInfo        once, first, with the first frame's header:
                                                          class_map[i] = (i, class name), threshold = conf
    /leaneye/detections  vision_msgs/msg/Detection2DArray one per frame, the image's header (stamp and
                                                          frame_id), empty when nothing was found;
                                                          hypothesis.class_id = class index as a string
                                                          (or the class name with class_id="name")
    /leaneye/latency     leaneye_msgs/msg/FrameLatency    one per frame: decode, preprocess, inference,
                                                          postprocess and total milliseconds

Ground truth: a bag from `leaneye scenes` also carries /ground_truth/detections and
/ground_truth/ignore_regions (Detection2DArray, class_id = index into /ground_truth/label_info,
stamped like the images). Replay then scores the frames by shared/EVAL.md's generated-scenes
protocol (COCO mAP, bootstrap interval, AP by object size), matching truth to frames by header
stamp. The protocol's detection settings (score >= 0.001, NMS IoU 0.65, at most 100 per frame)
differ from a deployment's, so the engine runs once per frame at the protocol's settings and the
published detections are derived from that run: those scoring at least `conf`, suppressed again
at the deployment's NMS IoU. Thresholding commutes with greedy NMS, so the result equals a run at
the deployment settings except in rare chains of overlapping boxes (and except for the cap of 100
detections per frame); the latency figures are those of the protocol's run, whose postprocess
handles more candidates. `evaluate=False` runs at the deployment settings and scores nothing.

Nothing here imports ROS: a ROS 2 node uses FrameProcessor for its per-frame work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import msgs
from .atomic import check_output_path
from .errors import LeanEyeError
from .eval.protocol import EVAL_PROTOCOL
from .latency import FrameLatency, LatencySummary
from .scenes.dataset import GROUND_TRUTH_TOPIC, IGNORE_TOPIC
from .scenes.dataset import LABEL_INFO_TOPIC as TRUTH_LABEL_INFO_TOPIC

DEFAULT_TOPIC = "/camera/image_raw"
DETECTIONS_TOPIC = "/leaneye/detections"
LABEL_INFO_TOPIC = "/leaneye/label_info"
LATENCY_TOPIC = "/leaneye/latency"
CLASS_ID_MODES = ("index", "name")
_BAD_FRAMES_LISTED = 5


@dataclass(frozen=True)
class ReplayOptions:
    topic: str = DEFAULT_TOPIC
    conf: float = 0.25  # deployment score threshold: what the output bag holds
    iou: float = 0.45  # deployment NMS IoU threshold
    max_detections: int = 300
    class_id: str = "index"  # hypothesis.class_id: "index" (as a string) or "name"
    threads: int = 0  # inference threads, 0 = the backend's default
    evaluate: bool = True  # score against the bag's ground truth when it carries some
    bootstrap: int = 1000  # resamples of the frames for the mAP intervals
    seed: int = 0  # of the bootstrap

    def check(self) -> None:
        if self.class_id not in CLASS_ID_MODES:
            raise LeanEyeError(f"class_id: expected one of {', '.join(CLASS_ID_MODES)}, got '{self.class_id}'")
        if not 0.0 <= self.conf <= 1.0:
            raise LeanEyeError(f"conf: expected a score threshold in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise LeanEyeError(f"iou: expected an NMS IoU threshold in [0, 1], got {self.iou}")
        if self.max_detections < 1:
            raise LeanEyeError(f"max_detections: expected a positive number, got {self.max_detections}")
        if self.bootstrap < 0:
            raise LeanEyeError(f"bootstrap: expected 0 or more resamples, got {self.bootstrap}")


# ---------------------------------------------------------------------------------------------
# Per frame


@dataclass(frozen=True)
class DeploymentFilter:
    """Deployment settings applied to detections found at the (looser) evaluation settings."""

    conf: float
    iou: float
    max_detections: int

    def apply(self, found, suppress: bool):
        """The detections a run at these settings would give; `suppress`: the decoder's output needs NMS."""
        keep = np.flatnonzero(found.scores >= self.conf)  # scores are sorted: so is keep
        if suppress and self.iou < EVAL_PROTOCOL.nms_iou and len(keep) > 1:
            from .vision.nms import nms

            keep = keep[
                nms(
                    found.boxes[keep],
                    found.scores[keep],
                    found.class_ids[keep],
                    self.iou,
                    max_detections=self.max_detections,
                )
            ]
        else:
            keep = keep[: self.max_detections]
        return dataclasses.replace(
            found, boxes=found.boxes[keep], scores=found.scores[keep], class_ids=found.class_ids[keep]
        )


@dataclass(frozen=True)
class ProcessedFrame:
    found: Any  # leaneye.detector.Detections from the engine run (evaluation settings when scoring)
    published: Any  # the Detections in `message`: at the deployment settings
    message: Any  # vision_msgs/msg/Detection2DArray with the image's header
    latency: FrameLatency


class FrameProcessor:
    """One decoded frame in, its Detection2DArray and FrameLatency out.

    `deployment` is set when `detector` runs at evaluation settings: the message then holds only
    what the deployment settings would publish (see the module docstring).
    """

    def __init__(self, detector, class_id: str = "index", deployment: DeploymentFilter | None = None):
        if class_id not in CLASS_ID_MODES:
            raise LeanEyeError(f"class_id: expected one of {', '.join(CLASS_ID_MODES)}, got '{class_id}'")
        self.detector = detector
        self.class_id = class_id
        self.deployment = deployment

    def label_info(self, header: Any) -> Any:
        threshold = self.deployment.conf if self.deployment is not None else self.detector.decode_params.score_threshold
        return msgs.label_info_msg(header, self.detector.class_names, threshold=threshold)

    def class_id_strings(self, detections) -> list[str]:
        if self.class_id == "name":
            return list(detections.names)
        return [str(int(index)) for index in detections.class_ids]

    def process(self, image: np.ndarray, header: Any, decode_ms: float = 0.0) -> ProcessedFrame:
        """Detect in a BGR frame; `decode_ms` is what turning the message into pixels took."""
        started = time.perf_counter()
        found = self.detector.detect(image)
        filtered = time.perf_counter()
        published = found
        if self.deployment is not None:
            published = self.deployment.apply(found, self.detector.decoder.runs_nms)
        postprocess_ms = found.timings["postprocess"] + (time.perf_counter() - filtered) * 1e3
        message = msgs.detection_array_msg(header, published.boxes, published.scores, self.class_id_strings(published))
        total_ms = decode_ms + (time.perf_counter() - started) * 1e3
        latency = FrameLatency(
            decode_ms=decode_ms,
            preprocess_ms=found.timings["preprocess"],
            inference_ms=found.timings["inference"],
            postprocess_ms=postprocess_ms,
            total_ms=total_ms,
            num_detections=len(published),
        )
        return ProcessedFrame(found, published, message, latency)


# ---------------------------------------------------------------------------------------------
# Ground truth carried by the bag


@dataclass(frozen=True)
class FrameTruth:
    boxes: np.ndarray  # (N, 4) xyxy pixels: objects, then ignore regions
    class_names: tuple
    ignore: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class BagTruth:
    classes: tuple  # from the truth's LabelInfo, in class index order
    by_stamp: dict  # header stamp (ns) -> FrameTruth


def read_ground_truth(reader) -> BagTruth | None:
    """The generator's truth topics of an open BagReader, or None when the bag has none."""
    if GROUND_TRUTH_TOPIC not in reader.topics:
        return None
    if TRUTH_LABEL_INFO_TOPIC not in reader.topics:
        raise LeanEyeError(
            f"{reader.path}: {GROUND_TRUTH_TOPIC} needs its class map on {TRUTH_LABEL_INFO_TOPIC}, which the bag lacks"
        )
    topics = [GROUND_TRUTH_TOPIC, TRUTH_LABEL_INFO_TOPIC] + ([IGNORE_TOPIC] if IGNORE_TOPIC in reader.topics else [])
    class_map: dict[int, str] = {}
    parts: dict[int, list] = {}  # stamp -> [(boxes, class ids, ignored)]
    for topic, _, msg in reader.messages(topics):
        if topic == TRUTH_LABEL_INFO_TOPIC:
            class_map.update(msgs.class_names_from_label_info(msg))
            continue
        boxes, _, class_ids, _ = msgs.boxes_from_detection_array(msg)
        parts.setdefault(msgs.stamp_to_ns(msg.header.stamp), []).append(
            (topic, boxes, class_ids, topic == IGNORE_TOPIC)
        )
    if not class_map:
        raise LeanEyeError(f"{reader.path}: topic {TRUTH_LABEL_INFO_TOPIC}: no class map")
    by_stamp = {}
    for stamp, pieces in parts.items():
        names, ignore = [], []
        for topic, _, class_ids, ignored in pieces:
            for class_id in class_ids:
                name = class_map.get(int(class_id)) if class_id.isdigit() else None
                if name is None:
                    raise LeanEyeError(
                        f"{reader.path}: topic {topic}: class_id '{class_id}' is not in the class map "
                        f"of {TRUTH_LABEL_INFO_TOPIC}"
                    )
                names.append(name)
                ignore.append(ignored)
        boxes = np.concatenate([piece[1] for piece in pieces]).astype(np.float64)
        by_stamp[stamp] = FrameTruth(boxes, tuple(names), np.array(ignore, dtype=bool))
    return BagTruth(tuple(class_map[index] for index in sorted(class_map)), by_stamp)


# ---------------------------------------------------------------------------------------------
# The replay


@dataclass
class ReplayReport:
    bag: str
    topic: str
    engine: str
    out: str | None
    frames: int  # replayed
    bad_frames: list  # of leaneye.bags.FrameError, skipped
    detections: int  # published in total
    latency: LatencySummary
    settings: dict  # what the engine ran at and what was published
    evaluation: Any = None  # leaneye.evaluation.EvalResult when the bag carries ground truth
    frames_without_truth: int = 0

    def to_dict(self) -> dict:
        return {
            "bag": self.bag,
            "topic": self.topic,
            "engine": self.engine,
            "out": self.out,
            "frames": self.frames,
            "bad_frames": len(self.bad_frames),
            "bad_frame_reasons": [
                {"index": bad.index, "log_time_ns": bad.log_time_ns, "reason": bad.reason} for bad in self.bad_frames
            ],
            "detections": self.detections,
            "settings": self.settings,
            "latency": self.latency.as_dict(),
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            "frames_without_ground_truth": self.frames_without_truth,
        }

    def format(self) -> str:
        published = self.settings["published"]
        lines = [
            f"{self.bag} {self.topic}: {self.frames} frames through {self.engine}, "
            f"{len(self.bad_frames)} bad frames skipped"
        ]
        lines += [
            f"  skipped message {bad.index} (log time {bad.log_time_ns} ns): {bad.reason}"
            for bad in self.bad_frames[:_BAD_FRAMES_LISTED]
        ]
        if len(self.bad_frames) > _BAD_FRAMES_LISTED:
            lines.append(f"  ... and {len(self.bad_frames) - _BAD_FRAMES_LISTED} more")
        lines.append(
            f"{self.detections} detections published (score >= {published['conf']}, NMS IoU {published['iou']}, "
            f"class_id as {published['class_id']})"
        )
        lines.append(self.latency.format_table())
        if self.evaluation is not None:
            engine_run = self.settings["engine_run"]
            lines.append(
                f"accuracy on the bag's ground truth (shared/EVAL.md generated scenes: score >= "
                f"{engine_run['conf']}, NMS IoU {engine_run['iou']}, at most {engine_run['max_detections']} per frame)"
                + (
                    f"; {self.frames_without_truth} frames without truth not scored"
                    if self.frames_without_truth
                    else ""
                )
            )
            lines.append(self.evaluation.format())
        if self.out is not None:
            lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def _scored(frames: Sequence, truth: BagTruth, names: Sequence[str], options: ReplayOptions):
    """EVAL.md scoring of (stamp, (height, width), Detections) per replayed frame that has truth."""
    from .eval import GroundTruth, ImageDetections, ImageTruth, evaluate

    images, detections, missing = [], {}, 0
    for stamp, (height, width), found in frames:
        frame_truth = truth.by_stamp.get(stamp)
        if frame_truth is None:
            missing += 1
            continue
        image_id = len(images)
        images.append(
            ImageTruth(
                image_id,
                f"stamp {stamp}",
                width,
                height,
                frame_truth.boxes,
                frame_truth.class_names,
                frame_truth.ignore,
            )
        )
        detections[image_id] = ImageDetections.from_class_ids(found.boxes, found.scores, found.class_ids, names)
    if not images:
        raise LeanEyeError(f"{GROUND_TRUTH_TOPIC}: no ground truth shares a header stamp with the {len(frames)} frames")
    result = evaluate(GroundTruth(images, truth.classes), detections, bootstrap=options.bootstrap, seed=options.seed)
    return result, missing


def replay_bag(
    bag: Path | str,
    engine_dir: Path | str,
    options: ReplayOptions = ReplayOptions(),
    out: Path | str | None = None,
    storage: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> ReplayReport:
    """Replay `bag` (folder, .mcap or .db3) through the engine; write the output bag to `out` if given
    (a folder, or a single .mcap / .db3 file; `storage` as in `leaneye.bags.output_storage`)."""
    from tqdm import tqdm

    from .bags import FrameError, find_image_topic, iter_images, open_bag_reader, open_bag_writer, output_storage
    from .detector import Detector

    options.check()
    if out is not None:
        out = Path(out)
        storage = output_storage(out, storage)
        check_output_path(out, force, "--out")
        source, target = Path(bag).resolve(), out.resolve()
        if target == source or source in target.parents or target in source.parents:
            # Replacing a folder that holds the input, or writing into the input's folder, would
            # destroy the recording or change what it holds.
            raise LeanEyeError(f"--out {out}: is, holds or lies inside the input bag {bag}; choose another path")
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(open_bag_reader(bag))
        try:
            topic = find_image_topic(reader.topics, options.topic)
        except LeanEyeError as exc:
            raise LeanEyeError(f"{bag}: {exc}") from None
        truth = read_ground_truth(reader) if options.evaluate else None
        deployment = DeploymentFilter(options.conf, options.iou, options.max_detections)
        if truth is not None:
            engine_run = EVAL_PROTOCOL.detector_settings()
        else:
            engine_run = {"conf": options.conf, "iou": options.iou, "max_detections": options.max_detections}
        detector = stack.enter_context(Detector.from_engine(engine_dir, threads=options.threads, **engine_run))
        processor = FrameProcessor(detector, options.class_id, deployment if truth is not None else None)
        writer = stack.enter_context(open_bag_writer(out, storage=storage, force=force)) if out is not None else None
        if writer is not None:
            for name, msgtype in (
                (LABEL_INFO_TOPIC, msgs.LABEL_INFO),
                (DETECTIONS_TOPIC, msgs.DETECTION_ARRAY),
                (LATENCY_TOPIC, msgs.FRAME_LATENCY),
            ):
                writer.add_topic(name, msgtype)

        timings, bad_frames, scored, detections = [], [], [], 0
        bar = stack.enter_context(
            tqdm(total=reader.counts[topic], desc="replay", unit="frame", file=sys.stderr, disable=not progress)
        )
        started = time.perf_counter()
        for item in iter_images(reader, topic):
            bar.update(1)
            if isinstance(item, FrameError):
                bad_frames.append(item)
                bar.set_postfix(bad=len(bad_frames))
                continue
            frame = processor.process(item.image, item.header, item.decode_ms)
            if writer is not None:
                if not timings:
                    writer.write(LABEL_INFO_TOPIC, item.log_time_ns, processor.label_info(item.header))
                writer.write(DETECTIONS_TOPIC, item.log_time_ns, frame.message)
                writer.write(LATENCY_TOPIC, item.log_time_ns, msgs.frame_latency_msg(item.header, frame.latency))
            timings.append(frame.latency.timings())
            detections += frame.latency.num_detections
            if truth is not None:
                scored.append((item.stamp_ns, item.image.shape[:2], frame.found))
        wall_s = time.perf_counter() - started
        bar.close()
        if not timings:
            if bad_frames:
                raise LeanEyeError(
                    f"{bag}: topic {topic}: none of its {len(bad_frames)} frames decodes "
                    f"(first: {bad_frames[0].reason})"
                )
            raise LeanEyeError(f"{bag}: topic {topic} holds no frames")
        evaluation, missing = _scored(scored, truth, detector.class_names, options) if truth is not None else (None, 0)
        settings = {
            "engine_run": engine_run,
            "published": {
                "conf": options.conf,
                "iou": options.iou,
                "max_detections": options.max_detections,
                "class_id": options.class_id,
            },
        }
        # Returned inside the block: the output bag is renamed into place only after scoring succeeded.
        return ReplayReport(
            bag=str(bag),
            topic=topic,
            engine=str(engine_dir),
            out=None if out is None else str(out),
            frames=len(timings),
            bad_frames=bad_frames,
            detections=detections,
            latency=LatencySummary(timings, wall_s),
            settings=settings,
            evaluation=evaluation,
            frames_without_truth=missing,
        )
