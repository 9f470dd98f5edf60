"""Recording a replay on a ROS 2 graph, without ROS: what leaneye's bag_recorder_node keeps, the
output bag it writes and the `leaneye replay` summary it prints.

The node (`leaneye.ros.bag_recorder_node`) hands every message over as the serialized CDR bytes it
received, with its arrival time; nothing is decoded until the playback has finished. Then:

- the output bag holds the detector's ~/detections, ~/latency and ~/label_info and the ground truth
  topics, each message logged at its header stamp (the recorded time, as in `leaneye replay`'s
  output; messages stamped before the first frame, such as the LabelInfo the detector sends at
  activation, are logged with the first frame). It is written whole or not at all
  (leaneye.bags.open_bag_writer).
- the summary is replay's (leaneye.replay.ReplayReport) over the frames whose detections came back,
  plus the playback's counts: frames published by the player, answered, dropped (published minus
  answered) and, in closed loop, timed out; and the transport percentiles the detector node adds
  to FrameLatency (receipt to publish, frame age). Ground truth is scored by replay's code, but only
  what the detector published can be scored: at its deployment thresholds, not EVAL.md's, so the
  mAP is usually lower than `leaneye replay`'s for the same engine and bag.

Docs: docs/ros-replay.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import msgs
from .errors import LeanEyeError
from .eval.protocol import EVAL_PROTOCOL
from .latency import PERCENTILES
from .parameters import ParameterSpec
from .playback import STATUS_TOPIC, TRUTH_TOPICS
from .replay import FrameRecord, ReplayReport, ground_truth_from_messages
from .scenes.dataset import GROUND_TRUTH_TOPIC
from .vision.detections import Detections

DETECTOR = "/leaneye"  # the detector node whose topics are recorded: ~/detections is /leaneye/detections
STORAGE_CHOICES = ("auto", "mcap", "sqlite3")

RECORDER_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "out", "", "output bag: a folder, or a single .mcap / .db3 file, written once playback finished (empty: none)"
    ),
    ParameterSpec("storage", "auto", "output storage (auto: from out's suffix, else mcap)", choices=STORAGE_CHOICES),
    ParameterSpec("force", False, "replace out (and report) if they exist"),
    ParameterSpec("report", "", "also write the summary as JSON here (empty: no report)"),
    ParameterSpec(
        "detector",
        DETECTOR,
        "the detector node (fully qualified name) whose ~/detections, ~/latency and ~/label_info are recorded "
        "and whose parameters the summary quotes",
    ),
    ParameterSpec("status_topic", STATUS_TOPIC, "the bag player's leaneye_msgs/PlaybackStatus topic"),
    ParameterSpec(
        "grace_s",
        2.0,
        "after the player finished, wait this long past the last message for frames still in flight",
        low=0.0,
        high=3600.0,
    ),
    ParameterSpec(
        "bootstrap", EVAL_PROTOCOL.bootstrap, "resamples of the frames for the mAP intervals", low=0, high=100000
    ),
)

_TRANSPORT = ("receipt_to_publish", "age")  # FrameLatency fields (ms) only the detector node fills


def detector_topics(detector: str) -> dict[str, str]:
    """topic -> message type of what the detector node `detector` publishes and the recorder keeps."""
    return {
        f"{detector}/label_info": msgs.LABEL_INFO,
        f"{detector}/detections": msgs.DETECTION_ARRAY,
        f"{detector}/latency": msgs.FRAME_LATENCY,
    }


@dataclass(frozen=True)
class PlaybackSummary:
    """The player's final leaneye_msgs/msg/PlaybackStatus, as plain data."""

    bag: str
    image_topic: str
    mode: str
    frames_total: int
    frames_published: int
    frames_timed_out: int

    @classmethod
    def from_msg(cls, msg: Any) -> PlaybackSummary:
        return cls(
            str(msg.bag),
            str(msg.image_topic),
            str(msg.mode),
            int(msg.frames_total),
            int(msg.frames_published),
            int(msg.frames_timed_out),
        )


@dataclass
class RecordingReport(ReplayReport):
    """ReplayReport's summary of a replay on a ROS 2 graph: `frames` are the frames answered."""

    playback: PlaybackSummary | None = None
    transport_ms: dict | None = None  # receipt_to_publish / age -> {p50, p90, p99, max}

    @property
    def drops(self) -> int:
        return self.playback.frames_published - self.frames

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "playback": {**dataclasses.asdict(self.playback), "frames_answered": self.frames, "drops": self.drops},
            "transport_ms": self.transport_ms,
        }

    def _heading_lines(self) -> list[str]:
        playback = self.playback
        line = (
            f"{self.bag} {self.topic}: {playback.mode} playback, {playback.frames_published} of "
            f"{playback.frames_total} frames published, {self.frames} answered by {self.engine}: "
            f"{self.drops} dropped (no detections came back; not scored)"
        )
        if playback.mode == "closed_loop":
            line += f", {playback.frames_timed_out} timed out"
        return [line]

    def _latency_lines(self) -> list[str]:
        columns = [f"p{q}" for q in PERCENTILES] + ["max"]
        lines = super()._latency_lines() + [f"{'detector node (ms)':<20}" + "".join(f"{c:>10}" for c in columns)]
        for name in _TRANSPORT:
            lines.append(f"{name:<20}" + "".join(f"{self.transport_ms[name][c]:>10.2f}" for c in columns))
        return lines

    def _accuracy_heading(self) -> str:
        scored, protocol = self.settings["scored"], EVAL_PROTOCOL.detector_settings()
        return (
            f"accuracy on the bag's ground truth (shared/EVAL.md generated scenes, but scored from what the "
            f"detector published: score >= {scored['conf']}, NMS IoU {scored['iou']}, at most "
            f"{scored['max_detections']} per frame, not EVAL.md's {protocol['conf']}, {protocol['iou']} and "
            f"{protocol['max_detections']}; `leaneye replay` scores at EVAL.md's)"
        )


class Recording:
    """The serialized messages a recorder received during one playback, and when."""

    def __init__(self, detector: str = DETECTOR):
        self.detector = detector
        self.topics = detector_topics(detector) | TRUTH_TOPICS
        self.detections_topic = f"{detector}/detections"
        self.latency_topic = f"{detector}/latency"
        self.label_info_topic = f"{detector}/label_info"
        self._received: list[tuple[str, bytes]] = []
        self.answered = 0  # Detection2DArray messages received
        self.latencies = 0  # FrameLatency messages received
        self.last_arrival_s: float | None = None
        self.first_s: float | None = None  # arrival of the first frame's news (status or detections)
        self.last_detections_s: float | None = None
        self.playback: PlaybackSummary | None = None
        self.finished_s: float | None = None

    def add(self, topic: str, data: bytes, arrival_s: float) -> None:
        """One message on one of `self.topics` as received (CDR bytes); `arrival_s` on a monotonic clock."""
        self._received.append((topic, bytes(data)))
        self.last_arrival_s = arrival_s
        if topic == self.latency_topic:
            self.latencies += 1
        if topic == self.detections_topic:
            self.answered += 1
            self.last_detections_s = arrival_s
            self._started(arrival_s)

    @property
    def received(self) -> int:
        return len(self._received)

    def status(self, playback: PlaybackSummary, finished: bool, arrival_s: float) -> None:
        """A PlaybackStatus from the player (sent after each frame, and once finished)."""
        self.playback = playback
        if playback.frames_published:
            self._started(arrival_s)
        if finished and self.finished_s is None:
            self.finished_s = arrival_s

    def _started(self, arrival_s: float) -> None:
        if self.first_s is None:
            self.first_s = arrival_s

    def complete(self, now_s: float, grace_s: float) -> bool:
        """The player finished (it says so once its other messages were acknowledged), and every frame it
        published came back with its detections and latency, or nothing came for `grace_s` seconds."""
        if self.finished_s is None:
            return False
        if self.answered >= self.playback.frames_published and self.latencies >= self.answered:
            return True
        return now_s - max(self.finished_s, self.last_arrival_s or 0.0) >= grace_s

    def messages(self) -> list[tuple[str, Any]]:
        """(topic, message) of everything received, decoded by the bag typestore, in arrival order."""
        store = msgs.typestore()
        decoded = []
        for index, (topic, data) in enumerate(self._received):
            msgtype = self.topics[topic]
            try:
                decoded.append((topic, store.deserialize_cdr(data, msgtype)))
            except Exception as exc:  # noqa: BLE001 - CDR decoding of foreign bytes fails in many ways
                raise LeanEyeError(f"topic {topic}: message {index} does not decode as {msgtype} ({exc})") from None
        return decoded

    def write(self, writer, messages: Sequence[tuple[str, Any]]) -> None:
        """Write `messages` (from `messages()`) into an open leaneye.bags.BagWriter, each at its header
        stamp, none before the first frame's; topics in the order of `self.topics`."""
        frame_stamps = [
            msgs.stamp_to_ns(msg.header.stamp) for topic, msg in messages if self.topics[topic] != msgs.LABEL_INFO
        ]
        first_ns = min(frame_stamps, default=0)
        present = [topic for topic in self.topics if any(name == topic for name, _ in messages)]
        for topic in present:
            writer.add_topic(topic, self.topics[topic])
        order = {topic: index for index, topic in enumerate(self.topics)}
        timed = sorted(
            ((max(first_ns, msgs.stamp_to_ns(msg.header.stamp)), order[topic], index, topic, msg))
            for index, (topic, msg) in enumerate(messages)
        )
        for log_time_ns, _, _, topic, msg in timed:
            writer.write(topic, log_time_ns, msg)

    def report(
        self,
        messages: Sequence[tuple[str, Any]],
        engine: str,
        published: Mapping[str, Any],
        out: str | None,
        bootstrap: int,
        seed: int = 0,
    ) -> RecordingReport:
        """The summary, once `complete`; `published` holds the detector's conf, iou, max_detections and class_id."""
        by_topic: dict[str, list] = {}
        for topic, msg in messages:
            by_topic.setdefault(topic, []).append(msg)
        names = self._class_names(by_topic.get(self.label_info_topic, []))
        latency_by_stamp = {msgs.stamp_to_ns(msg.header.stamp): msg for msg in by_topic.get(self.latency_topic, [])}
        truth_messages = [(topic, msg) for topic, msg in messages if topic in TRUTH_TOPICS]
        truth = None
        if any(topic == GROUND_TRUTH_TOPIC for topic, _ in truth_messages):
            truth = ground_truth_from_messages(truth_messages, f"recorded {GROUND_TRUTH_TOPIC}")
            if names is None:
                raise LeanEyeError(f"{self.label_info_topic}: no class map arrived; detections cannot be scored")
        frames, transport = [], {name: [] for name in _TRANSPORT}
        for detections in by_topic.get(self.detections_topic, []):
            stamp_ns = msgs.stamp_to_ns(detections.header.stamp)
            latency_msg = latency_by_stamp.pop(stamp_ns, None)
            if latency_msg is None:
                raise LeanEyeError(f"{self.latency_topic}: no FrameLatency for the detections stamped {stamp_ns} ns")
            latency = msgs.frame_latency_from_msg(latency_msg)
            for name in _TRANSPORT:
                transport[name].append(getattr(latency, f"{name}_ms"))
            scored = _published_detections(detections, names, self.detections_topic) if truth is not None else None
            frames.append(FrameRecord(stamp_ns, None, scored, latency))
        if not frames:
            raise LeanEyeError(
                f"{self.detections_topic}: none of the {self.playback.frames_published} frames published came back"
            )
        wall_s = max(self.last_detections_s - self.first_s, 1e-9)
        settings = {"published": dict(published), "scored": dict(published) if truth is not None else None}
        return RecordingReport.from_frames(
            frames,
            wall_s,
            truth,
            names or (),
            bootstrap,
            seed,
            bag=self.playback.bag,
            topic=self.playback.image_topic,
            engine=engine,
            out=out,
            bad_frames=[],
            settings=settings,
            playback=self.playback,
            transport_ms={name: _percentiles(values) for name, values in transport.items()},
        )

    @staticmethod
    def _class_names(label_infos: list) -> tuple[str, ...] | None:
        if not label_infos:
            return None
        class_map = msgs.class_names_from_label_info(label_infos[-1])
        return tuple(class_map[index] for index in sorted(class_map))


def _published_detections(msg: Any, names: Sequence[str], topic: str) -> Detections:
    """A Detection2DArray's detections with class indices (hypothesis class_id: index or name)."""
    boxes, scores, class_ids, _ = msgs.boxes_from_detection_array(msg)
    indices = []
    for class_id in class_ids:
        index = int(class_id) if class_id.isdigit() else (names.index(class_id) if class_id in names else -1)
        if not 0 <= index < len(names):
            raise LeanEyeError(f"{topic}: class_id '{class_id}' is not in the detector's class map ({len(names)})")
        indices.append(index)
    # The image size is not in the message; scoring does not use it.
    return Detections(boxes, scores, np.array(indices, dtype=np.int64), tuple(names), (0, 0))


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(array, q)) for q in PERCENTILES} | {"max": float(array.max())}
