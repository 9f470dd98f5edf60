"""Playing a bag onto a ROS 2 graph, without ROS: what leaneye's bag_player_node publishes and when.

The node (`leaneye.ros.bag_player_node`) only moves bytes: every message goes out as the CDR bytes
the bag recorded, nothing is converted. This module chooses the topics, walks the bag in log-time
order reading each image's header (for /clock, for matching its detections and for the progress
message), schedules realtime playback and builds leaneye_msgs/msg/PlaybackStatus. Docs:
docs/ros-replay.md.

Two modes:

    closed_loop  the next frame goes out once the detections of the previous one came back (matched
                 by header stamp) or `timeout_s` passed: peak throughput, no drops (as NVIDIA's
                 ros2_benchmark measures it)
    realtime     frames go out at their recorded spacing divided by `rate`: what a detector slower
                 than the camera drops
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from . import msgs
from .bags import IMAGE_TYPES, FrameError, find_image_topic
from .errors import LeanEyeError
from .parameters import QOS_RELIABILITY, ParameterSpec
from .replay import DEFAULT_TOPIC, DETECTIONS_TOPIC
from .scenes.dataset import GROUND_TRUTH_TOPIC, IGNORE_TOPIC
from .scenes.dataset import LABEL_INFO_TOPIC as TRUTH_LABEL_INFO_TOPIC

PLAYBACK_MODES = ("realtime", "closed_loop")
PLAYBACK_STATUS = "leaneye_msgs/msg/PlaybackStatus"
PLAYER_NODE_NAME = "bag_player"
STATUS_TOPIC = f"/{PLAYER_NODE_NAME}/status"  # the player's ~/status
# The ground truth of a `leaneye scenes` bag, played when present, with its message types.
TRUTH_TOPICS = {
    TRUTH_LABEL_INFO_TOPIC: msgs.LABEL_INFO,
    GROUND_TRUTH_TOPIC: msgs.DETECTION_ARRAY,
    IGNORE_TOPIC: msgs.DETECTION_ARRAY,
}

PLAYER_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("bag", "", "the bag to play: a rosbag2 folder, or a single .mcap / .db3 file"),
    ParameterSpec(
        "image_topic",
        "",
        f"image topic to play (empty: the bag's only image topic, else {DEFAULT_TOPIC} or its /compressed sibling)",
    ),
    ParameterSpec(
        "mode",
        "closed_loop",
        "closed_loop: each frame waits for its detections (peak throughput, no drops); realtime: frames at "
        "their recorded spacing divided by rate (counts what the detector drops)",
        choices=PLAYBACK_MODES,
    ),
    ParameterSpec("rate", 1.0, "realtime: play at the recorded rate times this", low=0.01, high=1000.0),
    ParameterSpec(
        "detections_topic", DETECTIONS_TOPIC, "closed_loop: the detector's Detection2DArray topic to wait on"
    ),
    ParameterSpec(
        "timeout_s",
        5.0,
        "closed_loop: a frame whose detections are not back within this many seconds is counted as timed out "
        "and playback moves on",
        low=0.01,
        high=3600.0,
    ),
    ParameterSpec(
        "clock_hz",
        200.0,
        "realtime: /clock ticks per second between frames (the resolution of the detector's frame age); "
        "closed_loop publishes /clock with each frame only",
        low=1.0,
        high=10000.0,
    ),
    ParameterSpec("qos_reliability", "reliable", "image publisher reliability", choices=QOS_RELIABILITY),
    ParameterSpec(
        "wait_for_recorder",
        False,
        "before the first frame, also wait until ~/status and the ground truth topics have subscribers "
        "(a bag_recorder_node subscribes to ~/status only once the detector's topics reach it)",
    ),
    ParameterSpec(
        "wait_timeout_s",
        120.0,
        "give up (exit 1) when the subscribers and publishers waited for have not appeared after this long",
        low=0.1,
        high=86400.0,
    ),
    ParameterSpec("start_delay_s", 0.0, "seconds to wait after everything waited for is there", low=0.0, high=3600.0),
    ParameterSpec(
        "shutdown_when_done", True, "exit 0 at the end of the bag (false: keep ~/status latched until Ctrl-C)"
    ),
)


def choose_image_topic(topics: Mapping[str, str], requested: str) -> str:
    """`requested` (image_transport's naming, via find_image_topic); when empty, the bag's only image
    topic, or DEFAULT_TOPIC's when it has several."""
    if not requested:
        images = [name for name, msgtype in topics.items() if msgtype in IMAGE_TYPES]
        if len(images) == 1:
            return images[0]
        requested = DEFAULT_TOPIC
    return find_image_topic(topics, requested)


def played_topics(topics: Mapping[str, str], image_topic: str) -> dict[str, str]:
    """topic -> message type of what is played: the image topic and the ground truth topics present
    (with the generator's types: a recorder subscribes with those)."""
    truth = {name: msgtype for name, msgtype in TRUTH_TOPICS.items() if topics.get(name) == msgtype}
    return {image_topic: topics[image_topic]} | truth


class PlayedMessage(NamedTuple):
    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes  # the recorded CDR bytes, published as they are
    stamp_ns: int | None  # an image's header stamp; None for other topics
    frame_id: str  # an image's header frame_id; "" for other topics


def iter_played(reader, topics: Mapping[str, str], image_topic: str) -> Iterator[PlayedMessage | FrameError]:
    """The messages of `topics` in log-time order. An image whose header cannot be read is a FrameError
    (skipped, not published: its detections could not be matched); an unreadable bag raises LeanEyeError."""
    frame_index = 0
    for topic, msgtype, log_time_ns, data in reader.raw_messages(list(topics)):
        if topic != image_topic:
            yield PlayedMessage(topic, msgtype, log_time_ns, bytes(data), None, "")
            continue
        try:
            header = reader.deserialize(data, msgtype).header
            stamp_ns = msgs.stamp_to_ns(header.stamp)
        except Exception as exc:  # noqa: BLE001 - CDR decoding of corrupt bytes fails in many ways
            yield FrameError(frame_index, log_time_ns, f"does not decode as {msgtype} ({type(exc).__name__}: {exc})")
        else:
            yield PlayedMessage(topic, msgtype, log_time_ns, bytes(data), stamp_ns, header.frame_id)
        frame_index += 1


class RealtimeClock:
    """Realtime playback's schedule and simulated time.

    A message is due `(log time - first log time) / rate` seconds after the first went out. The
    simulated time (/clock) is each frame's stamp when it goes out and, between frames, runs on from
    it at `rate` times the wall clock, so that a detector's frame age (its clock minus the frame's
    stamp) measures the time it took, at the resolution of the /clock ticks. It never goes backwards.
    """

    def __init__(self, rate: float):
        self.rate = rate
        self._origin: tuple[float, int] | None = None  # (monotonic s, log time ns) of the first message
        self._frame: tuple[float, int] | None = None  # (monotonic s, simulated ns) of the last frame

    def due_s(self, log_time_ns: int, now_s: float) -> float:
        if self._origin is None:
            self._origin = (now_s, log_time_ns)
        start_s, first_ns = self._origin
        return start_s + max(0, log_time_ns - first_ns) / 1e9 / self.rate

    def frame_ns(self, stamp_ns: int, now_s: float) -> int:
        """The simulated time to publish with a frame stamped `stamp_ns` going out at `now_s`."""
        sim_ns = max(stamp_ns, self.now_ns(now_s) or 0)
        self._frame = (now_s, sim_ns)
        return sim_ns

    def now_ns(self, now_s: float) -> int | None:
        """The simulated time at `now_s` (None before the first frame)."""
        if self._frame is None:
            return None
        sent_s, sim_ns = self._frame
        return sim_ns + int(max(0.0, now_s - sent_s) * self.rate * 1e9)


class PlaybackProgress:
    """Counts for leaneye_msgs/msg/PlaybackStatus."""

    def __init__(self, bag: str, image_topic: str, mode: str, frames_total: int):
        self.bag, self.image_topic, self.mode, self.frames_total = bag, image_topic, mode, frames_total
        self.frames_published = 0
        self.frames_timed_out = 0
        self.frames_skipped = 0  # images whose header did not decode: never published
        self.last_stamp_ns = 0
        self.last_frame_id = ""

    def published(self, message: PlayedMessage) -> None:
        self.frames_published += 1
        self.last_stamp_ns, self.last_frame_id = message.stamp_ns, message.frame_id

    def status_msg(self, finished: bool, types: msgs.MessageTypes) -> Any:
        return types.get(PLAYBACK_STATUS)(
            header=msgs.header(self.last_stamp_ns, self.last_frame_id, types),
            bag=self.bag,
            image_topic=self.image_topic,
            mode=self.mode,
            frames_total=self.frames_total,
            frames_published=self.frames_published,
            frames_timed_out=self.frames_timed_out,
            finished=finished,
        )

    def format(self) -> str:
        text = f"{self.frames_published} of {self.frames_total} frames of {self.bag} {self.image_topic} published"
        if self.mode == "closed_loop":
            text += f", {self.frames_timed_out} timed out"
        if self.frames_skipped:
            text += f", {self.frames_skipped} skipped (header does not decode)"
        return text


def check_bag_has_frames(bag: str, image_topic: str, counts: Mapping[str, int]) -> None:
    if not counts.get(image_topic):
        raise LeanEyeError(f"{bag}: topic {image_topic} holds no frames")
