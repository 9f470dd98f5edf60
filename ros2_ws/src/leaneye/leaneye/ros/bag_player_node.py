"""`ros2 run leaneye bag_player_node --ros-args -p bag:=BAG`: play a bag's camera topic (and its ground
truth) to a detector, in closed loop or in real time, through leaneye's count-checked bag reader.

Each frame: /clock (rosgraph_msgs/Clock = the image's header stamp, for use_sim_time nodes; in real
time it also ticks between frames), then the image as the CDR bytes the bag holds, then ~/status
(leaneye_msgs/PlaybackStatus, reliable, transient-local). Ground truth messages go out as recorded.
In closed loop the next frame waits for the Detection2DArray stamped like this one (or timeout_s).
Before the first frame the player waits for a subscriber on the image topic (closed loop: and a
publisher of detections_topic; with wait_for_recorder: and subscribers on ~/status and the ground
truth topics). At the end it waits until every subscriber acknowledged every message, publishes
~/status with finished=true and exits 0. A missing, corrupt or image-less bag, or a bad parameter:
one log line and exit code 1.

The per-message logic is ROS-free (leaneye.playback); this node only publishes and waits.
Docs: docs/ros-replay.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from vision_msgs.msg import Detection2DArray

from .. import msgs
from ..bags import FrameError, open_bag_reader
from ..errors import LeanEyeError
from ..parameters import first_problem
from ..playback import (
    PLAYBACK_STATUS,
    PLAYER_NODE_NAME,
    PLAYER_PARAMETERS,
    PlaybackProgress,
    PlayedMessage,
    RealtimeClock,
    check_bag_has_frames,
    choose_image_topic,
    iter_played,
    played_topics,
)
from .node_support import declare_parameters, run_to_completion

_SPIN_S = 0.05  # longest single wait, so that Ctrl-C and deadlines are noticed
_ACK_TIMEOUT = Duration(seconds=10.0)  # for the messages to reach every subscriber (DDS repairs losses)
_WAITING_LOG_PERIOD_S = 10.0


class BagPlayerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(PLAYER_NODE_NAME, **kwargs)
        self.values = declare_parameters(self, PLAYER_PARAMETERS)
        self.types = msgs.GeneratedTypes()
        self.progress: PlaybackProgress | None = None
        self.finished = False
        self._answered: set[int] = set()  # header stamps of the detections that came back
        self._clock_publisher = None
        # Realtime playback's schedule and simulated time; closed loop publishes each frame's stamp.
        self._realtime = RealtimeClock(self.values["rate"]) if self.values["mode"] == "realtime" else None
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self)

    def run(self) -> int:
        """Play the bag; 0 once it was played to the end, 1 on bad input (logged in one line)."""
        problem = first_problem(PLAYER_PARAMETERS, self.values)
        if problem is None and not self.values["bag"]:
            problem = "bag: expected a rosbag2 folder or a .mcap / .db3 file, got an empty string"
        if problem is not None:
            self.get_logger().error(f"parameter {problem}")
            return 1
        bag = self.values["bag"]
        try:
            with open_bag_reader(bag) as reader:
                try:
                    image_topic = choose_image_topic(reader.topics, self.values["image_topic"])
                except LeanEyeError as exc:
                    raise LeanEyeError(f"{bag}: {exc}") from None
                check_bag_has_frames(bag, image_topic, reader.counts)
                self.progress = PlaybackProgress(bag, image_topic, self.values["mode"], reader.counts[image_topic])
                return self._play(reader, played_topics(reader.topics, image_topic))
        except LeanEyeError as exc:
            self.get_logger().error(str(exc))
            return 1

    def _play(self, reader, topics: dict[str, str]) -> int:
        progress, values = self.progress, self.values
        closed_loop = values["mode"] == "closed_loop"
        reliability = (
            ReliabilityPolicy.RELIABLE if values["qos_reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        )
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        publishers = {}
        for topic, msgtype in topics.items():
            if topic == progress.image_topic:
                qos = QoSProfile(depth=10, reliability=reliability)
            else:
                # A LabelInfo is sent once: kept for late subscribers, as the generator and the detector do.
                qos = latched if msgtype == msgs.LABEL_INFO else QoSProfile(depth=100)
            publishers[topic] = self.create_publisher(self.types.get(msgtype), topic, qos)
        self._clock_publisher = self.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        status = self.create_publisher(self.types.get(PLAYBACK_STATUS), "~/status", latched)
        waits = {
            f"a subscriber on {progress.image_topic}": lambda: (
                publishers[progress.image_topic].get_subscription_count() > 0
            )
        }
        if closed_loop:
            detections = self.create_subscription(
                Detection2DArray, values["detections_topic"], self._on_detections, QoSProfile(depth=10)
            )
            waits[f"a publisher on {detections.topic_name}"] = lambda: detections.get_publisher_count() > 0
        if values["wait_for_recorder"]:
            for topic in [status.topic_name] + [name for name in topics if name != progress.image_topic]:
                publisher = status if topic == status.topic_name else publishers[topic]
                waits[f"a subscriber on {topic}"] = lambda publisher=publisher: publisher.get_subscription_count() > 0
        if not self._wait_for(waits):
            return 1
        self._spin_until(lambda: False, time.monotonic() + values["start_delay_s"])
        self.get_logger().info(
            f"playing {progress.frames_total} frames of {progress.bag} {progress.image_topic} ({values['mode']}"
            + (f", rate {values['rate']:g}" if not closed_loop else "")
            + ")"
        )

        for item in iter_played(reader, topics, progress.image_topic):
            if isinstance(item, FrameError):
                progress.frames_skipped += 1
                self.get_logger().warning(
                    f"{progress.bag} {progress.image_topic} message {item.index}: {item.reason}; skipped"
                )
                continue
            if not closed_loop:
                self._wait_until_due(item.log_time_ns)
            if item.stamp_ns is None:
                publishers[item.topic].publish(item.data)
                continue
            self._publish_frame(item, publishers[item.topic])
            if closed_loop and not self._spin_until(
                lambda stamp=item.stamp_ns: stamp in self._answered, time.monotonic() + values["timeout_s"]
            ):
                progress.frames_timed_out += 1
            status.publish(progress.status_msg(False, self.types))
        # finished=true only once every subscriber holds every message: a recorder that sees it misses nothing.
        for publisher in [*publishers.values(), status]:
            if not publisher.wait_for_all_acked(_ACK_TIMEOUT):
                self.get_logger().warning(f"{publisher.topic_name}: not acknowledged by every subscriber in time")
        status.publish(progress.status_msg(True, self.types))
        status.wait_for_all_acked(_ACK_TIMEOUT)
        self.finished = True
        self.get_logger().info(f"finished: {progress.format()}")
        if not values["shutdown_when_done"]:
            self._spin_until(lambda: False, float("inf"))
        return 0

    def _publish_frame(self, item: PlayedMessage, images) -> None:
        """/clock first, so that a use_sim_time detector sees the frame's time when the frame arrives."""
        sim_ns = item.stamp_ns if self._realtime is None else self._realtime.frame_ns(item.stamp_ns, time.monotonic())
        self._clock_publisher.publish(msgs.clock_msg(sim_ns, self.types))
        images.publish(item.data)
        self.progress.published(item)

    def _wait_until_due(self, log_time_ns: int) -> None:
        """Realtime: serve callbacks and tick /clock until the message logged at `log_time_ns` is due."""
        realtime, tick_s = self._realtime, 1.0 / self.values["clock_hz"]
        due_s = realtime.due_s(log_time_ns, time.monotonic())
        while (now_s := time.monotonic()) < due_s:
            sim_ns = realtime.now_ns(now_s)
            if sim_ns is not None:
                self._clock_publisher.publish(msgs.clock_msg(sim_ns, self.types))
            self._executor.spin_once(timeout_sec=min(due_s - now_s, tick_s))

    def _on_detections(self, msg: Any) -> None:
        self._answered.add(msgs.stamp_to_ns(msg.header.stamp))

    def _wait_for(self, waits: dict[str, Callable[[], bool]]) -> bool:
        """Spin until every condition holds; False (logged) after wait_timeout_s."""
        timeout_s = self.values["wait_timeout_s"]
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [what for what, ready in waits.items() if not ready()]
            if not missing:
                return True
            if time.monotonic() >= deadline:
                self.get_logger().error(
                    f"gave up after {timeout_s:g} s (wait_timeout_s) waiting for {', '.join(missing)}"
                )
                return False
            self.get_logger().info(f"waiting for {', '.join(missing)}", throttle_duration_sec=_WAITING_LOG_PERIOD_S)
            self._executor.spin_once(timeout_sec=_SPIN_S)

    def _spin_until(self, condition: Callable[[], bool], deadline_s: float) -> bool:
        """Serve callbacks until `condition()` holds (True) or time.monotonic() reaches `deadline_s` (False)."""
        while not condition():
            remaining = deadline_s - time.monotonic()
            if remaining <= 0:
                return False
            self._executor.spin_once(timeout_sec=min(remaining, _SPIN_S))
        return True

    def interrupted(self) -> int:
        if self.finished:
            return 0
        if self.progress is not None:
            self.get_logger().info(f"interrupted: {self.progress.format()}")
        return 1

    def destroy_node(self) -> None:
        self._executor.remove_node(self)
        self._executor.shutdown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_to_completion(BagPlayerNode, PLAYER_NODE_NAME, args)
