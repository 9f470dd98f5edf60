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
stamp. The protocol's detection settings (`leaneye.eval.protocol.EVAL_PROTOCOL`) differ from a
deployment's, so each frame's backend outputs are postprocessed twice, without a second inference:
at the deployment settings for what is published (and timed), then at the protocol's for scoring.
The output bag is therefore the same as with `evaluate=False` (which scores nothing), and the
latency times the same work. NaN or infinite boxes or scores from the model stop the replay with an
error naming the engine and the frame (message index and stamp).

Nothing here imports ROS: the per-frame work is `leaneye.pipeline.FrameProcessor`, as in a node.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import msgs
from .atomic import check_output_path
from .errors import LeanEyeError, ParameterError
from .eval.protocol import EVAL_PROTOCOL
from .latency import FrameLatency, LatencySummary
from .pipeline import FrameProcessor, check_class_id
from .scenes.dataset import GROUND_TRUTH_TOPIC, IGNORE_TOPIC
from .scenes.dataset import LABEL_INFO_TOPIC as TRUTH_LABEL_INFO_TOPIC
from .vision.detections import Detections
from .vision.postprocess import DetectionSettings, NonFiniteOutputs, Postprocessor

DEFAULT_TOPIC = "/camera/image_raw"
DETECTIONS_TOPIC = "/leaneye/detections"
LABEL_INFO_TOPIC = "/leaneye/label_info"
LATENCY_TOPIC = "/leaneye/latency"
_BAD_FRAMES_LISTED = 5


@dataclass(frozen=True)
class ReplayOptions:
    topic: str = DEFAULT_TOPIC
    conf: float = 0.25  # deployment score threshold: what the output bag holds
    iou: float = 0.45  # deployment NMS IoU threshold
    max_detections: int = 300
    class_id: str = "index"  # hypothesis.class_id: "index" (as a string) or "name"
    threads: int = 0  # inference threads, 0 = the backend's default
    device: str | None = None  # where the backend runs, None = its default device
    extra: dict = field(default_factory=dict)  # backend-specific options (BackendOptions.extra)
    evaluate: bool = True  # score against the bag's ground truth when it carries some
    bootstrap: int = EVAL_PROTOCOL.bootstrap  # resamples of the frames for the mAP intervals
    seed: int = 0  # of the bootstrap

    detection_settings: DetectionSettings = field(init=False, repr=False)  # conf, iou, max_detections

    def __post_init__(self) -> None:
        # Set once (the class is frozen); DetectionSettings checks them as the detector does.
        object.__setattr__(self, "detection_settings", DetectionSettings(self.conf, self.iou, self.max_detections))
        check_class_id(self.class_id)
        if self.bootstrap < 0:
            raise LeanEyeError(f"bootstrap: expected 0 or more resamples, got {self.bootstrap}")


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
    return ground_truth_from_messages(((topic, msg) for topic, _, msg in reader.messages(topics)), str(reader.path))


def ground_truth_from_messages(messages: Iterable[tuple[str, Any]], source: str) -> BagTruth:
    """The truth in (topic, message) pairs of the generator's truth topics (a bag's, or a recorder's);
    `source` names where they came from in errors."""
    class_map: dict[int, str] = {}
    parts: dict[int, list] = {}  # stamp -> [(topic, boxes, class ids, ignored)]
    for topic, msg in messages:
        if topic == TRUTH_LABEL_INFO_TOPIC:
            class_map.update(msgs.class_names_from_label_info(msg))
            continue
        boxes, _, class_ids, _ = msgs.boxes_from_detection_array(msg)
        parts.setdefault(msgs.stamp_to_ns(msg.header.stamp), []).append(
            (topic, boxes, class_ids, topic == IGNORE_TOPIC)
        )
    if not class_map:
        raise LeanEyeError(f"{source}: topic {TRUTH_LABEL_INFO_TOPIC}: no class map")
    by_stamp = {}
    for stamp, pieces in parts.items():
        names, ignore = [], []
        for topic, _, class_ids, ignored in pieces:
            for class_id in class_ids:
                name = class_map.get(int(class_id)) if class_id.isdigit() else None
                if name is None:
                    raise LeanEyeError(
                        f"{source}: topic {topic}: class_id '{class_id}' is not in the class map "
                        f"of {TRUTH_LABEL_INFO_TOPIC}"
                    )
                names.append(name)
                ignore.append(ignored)
        boxes = np.concatenate([piece[1] for piece in pieces]).astype(np.float64)
        by_stamp[stamp] = FrameTruth(boxes, tuple(names), np.array(ignore, dtype=bool))
    return BagTruth(tuple(class_map[index] for index in sorted(class_map)), by_stamp)


# ---------------------------------------------------------------------------------------------
# The replay


class FrameRecord(NamedTuple):
    """One frame that came back with detections: what a ReplayReport is built from."""

    stamp_ns: int  # the image header's stamp: matched to the ground truth
    image_size: tuple[int, int] | None  # (height, width); None where unknown (a recorder sees no images)
    scored: Detections | None  # what is scored against the truth (None when nothing is scored)
    latency: FrameLatency


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
    settings: dict  # what was published, and what was scored
    evaluation: Any = None  # leaneye.evaluation.EvalResult when the bag carries ground truth
    frames_without_truth: int = 0

    @classmethod
    def from_frames(
        cls,
        frames: Sequence[FrameRecord],
        wall_s: float,
        truth: BagTruth | None,
        class_names: Sequence[str],
        bootstrap: int,
        seed: int,
        **fields: Any,
    ):
        """The report of `frames` (latency, detections, and the scores when there is truth); `fields`
        are the remaining ones (bag, topic, engine, out, bad_frames, settings, and a subclass's)."""
        evaluation, missing = (
            score_frames(frames, truth, class_names, bootstrap, seed) if truth is not None else (None, 0)
        )
        return cls(
            frames=len(frames),
            detections=sum(frame.latency.num_detections for frame in frames),
            latency=LatencySummary([frame.latency.timings() for frame in frames], wall_s),
            evaluation=evaluation,
            frames_without_truth=missing,
            **fields,
        )

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
        lines = self._heading_lines()
        lines.append(
            f"{self.detections} detections published (score >= {published['conf']}, NMS IoU {published['iou']}, "
            f"class_id as {published['class_id']})"
        )
        lines += self._latency_lines()
        if self.evaluation is not None:
            lines.append(
                self._accuracy_heading()
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

    def _heading_lines(self) -> list[str]:
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
        return lines

    def _latency_lines(self) -> list[str]:
        return [self.latency.format_table()]

    def _accuracy_heading(self) -> str:
        scored = self.settings["scored"]
        return (
            f"accuracy on the bag's ground truth (shared/EVAL.md generated scenes: score >= "
            f"{scored['conf']}, NMS IoU {scored['iou']}, at most {scored['max_detections']} per frame)"
        )


def score_frames(frames: Sequence[FrameRecord], truth: BagTruth, names: Sequence[str], bootstrap: int, seed: int):
    """EVAL.md scoring of each frame's `scored` detections against the truth of its stamp; returns
    (EvalResult, number of frames without truth). `names` are the detector's classes, in index order."""
    from .eval import GroundTruth, ImageDetections, ImageTruth, evaluate

    images, detections, missing = [], {}, 0
    for frame in frames:
        frame_truth = truth.by_stamp.get(frame.stamp_ns)
        if frame_truth is None:
            missing += 1
            continue
        # The image size only labels COCO's image entry; no score depends on it.
        height, width = frame.image_size or (0, 0)
        image_id = len(images)
        images.append(
            ImageTruth(
                image_id,
                f"stamp {frame.stamp_ns}",
                width,
                height,
                frame_truth.boxes,
                frame_truth.class_names,
                frame_truth.ignore,
            )
        )
        found = frame.scored
        detections[image_id] = ImageDetections.from_class_ids(found.boxes, found.scores, found.class_ids, names)
    if not images:
        raise LeanEyeError(f"{GROUND_TRUTH_TOPIC}: no ground truth shares a header stamp with the {len(frames)} frames")
    result = evaluate(GroundTruth(images, truth.classes), detections, bootstrap=bootstrap, seed=seed)
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

    if out is not None:
        out = Path(out)
        storage = output_storage(out, storage)
        check_output_path(out, force)
        source, target = Path(bag).resolve(), out.resolve()
        if target == source or source in target.parents or target in source.parents:
            # Replacing a folder that holds the input, or writing into the input's folder, would
            # destroy the recording or change what it holds.
            raise ParameterError("out", f"{out} is, holds or lies inside the input bag {bag}; choose another path")
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(open_bag_reader(bag))
        try:
            topic = find_image_topic(reader.topics, options.topic)
        except LeanEyeError as exc:
            raise LeanEyeError(f"{bag}: {exc}") from None
        truth = read_ground_truth(reader) if options.evaluate else None
        published = options.detection_settings
        detector = stack.enter_context(
            Detector.from_engine(
                engine_dir,
                conf=published.conf,
                iou=published.iou,
                max_detections=published.max_detections,
                threads=options.threads,
                device=options.device,
                extra=options.extra,
            )
        )
        scoring = None
        if truth is not None:
            scoring = Postprocessor(detector.manifest, DetectionSettings(**EVAL_PROTOCOL.detector_settings()))
        types = msgs.bag_types()
        processor = FrameProcessor(detector, types, options.class_id, scoring)
        writer = stack.enter_context(open_bag_writer(out, storage=storage, force=force)) if out is not None else None
        if writer is not None:
            for name, msgtype in (
                (LABEL_INFO_TOPIC, msgs.LABEL_INFO),
                (DETECTIONS_TOPIC, msgs.DETECTION_ARRAY),
                (LATENCY_TOPIC, msgs.FRAME_LATENCY),
            ):
                writer.add_topic(name, msgtype)

        records, bad_frames = [], []
        bar = stack.enter_context(
            tqdm(total=reader.counts[topic], desc="replay", unit="frame", file=sys.stderr, disable=not progress)
        )
        started = time.perf_counter()
        for index, item in enumerate(iter_images(reader, topic)):
            bar.update(1)
            if isinstance(item, FrameError):
                bad_frames.append(item)
                bar.set_postfix(bad=len(bad_frames))
                continue
            try:
                frame = processor.process(item.image, item.header, item.decode_ms)
            except NonFiniteOutputs as exc:
                raise LeanEyeError(
                    f"{engine_dir}: on {bag} {topic} message {index} (stamp {item.stamp_ns} ns): {exc}"
                ) from None
            if writer is not None:
                if not records:
                    writer.write(LABEL_INFO_TOPIC, item.log_time_ns, processor.label_info(item.header))
                writer.write(DETECTIONS_TOPIC, item.log_time_ns, frame.message)
                writer.write(LATENCY_TOPIC, item.log_time_ns, processor.latency_msg(item.header, frame.latency))
            records.append(FrameRecord(item.stamp_ns, item.image.shape[:2], frame.scored, frame.latency))
        wall_s = time.perf_counter() - started
        bar.close()
        if not records:
            if bad_frames:
                raise LeanEyeError(
                    f"{bag}: topic {topic}: none of its {len(bad_frames)} frames decodes "
                    f"(first: {bad_frames[0].reason})"
                )
            raise LeanEyeError(f"{bag}: topic {topic} holds no frames")
        settings = {
            "published": {
                "conf": published.conf,
                "iou": published.iou,
                "max_detections": published.max_detections,
                "class_id": options.class_id,
            },
            # Scoring postprocesses the same backend outputs at the protocol's settings.
            "scored": None if scoring is None else EVAL_PROTOCOL.detector_settings(),
        }
        # Returned inside the block: the output bag is renamed into place only after scoring succeeded.
        return ReplayReport.from_frames(
            records,
            wall_s,
            truth,
            detector.class_names,
            options.bootstrap,
            options.seed,
            bag=str(bag),
            topic=topic,
            engine=str(engine_dir),
            out=None if out is None else str(out),
            bad_frames=bad_frames,
            settings=settings,
        )
