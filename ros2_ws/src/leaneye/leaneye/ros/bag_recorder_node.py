"""`ros2 run leaneye bag_recorder_node --ros-args -p out:=OUT`: record a replay's detections, latency
and ground truth, and print `leaneye replay`'s summary once the bag player has finished.

Subscribes (serialized: nothing is decoded while frames flow) to the detector's ~/detections,
~/latency and ~/label_info (transient-local) and to /ground_truth/{detections,ignore_regions,
label_info}. It subscribes to the player's status only once the detector's detections and latency
publishers have reached it, so a player with wait_for_recorder starts only when nothing of the first
frame can be missed. When the status says finished and every published frame was answered (or
grace_s passed with nothing new), it asks the detector for its thresholds, writes the output bag
(whole or not at all), prints the summary (and writes the JSON report) and exits 0. Interrupted
before that, or on an error: one log line, no output bag, exit code 1.

The per-message logic is ROS-free (leaneye.recording). Docs: docs/ros-replay.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path
from typing import Any

from leaneye_msgs.msg import PlaybackStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile

from .. import msgs
from ..atomic import atomic_write_text, check_output_path
from ..bags import open_bag_writer, output_storage
from ..errors import LeanEyeError
from ..parameters import first_problem
from ..recording import RECORDER_PARAMETERS, PlaybackSummary, Recording
from .node_support import declare_parameters, run_to_completion

NODE_NAME = "bag_recorder"
_SPIN_S = 0.05
_WAITING_LOG_PERIOD_S = 10.0
_PARAMETER_TIMEOUT_S = 5.0
_DRAIN_S = 0.1
# The detector's parameters quoted in the summary: its name -> the summary's (leaneye replay's) name.
_DETECTOR_SETTINGS = {
    "conf_threshold": "conf",
    "iou_threshold": "iou",
    "max_detections": "max_detections",
    "class_id": "class_id",
}


class BagRecorderNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.values = declare_parameters(self, RECORDER_PARAMETERS)
        self.types = msgs.GeneratedTypes()
        self.recording = Recording(self.values["detector"])
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._recorded = {
            topic: self.create_subscription(
                self.types.get(msgtype),
                topic,
                functools.partial(self._on_message, topic),
                latched if msgtype == msgs.LABEL_INFO else QoSProfile(depth=100),
                raw=True,
            )
            for topic, msgtype in self.recording.topics.items()
        }

    def run(self) -> int:
        """Record until the playback is complete, then write; 0 when written, 1 on an error (one line)."""
        try:
            out, storage, report_path = self._outputs()
            self._wait_for_detector()
            self.create_subscription(
                PlaybackStatus,
                self.values["status_topic"],
                self._on_status,
                QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL),
            )
            self.get_logger().info(
                f"recording {', '.join(self.recording.topics)} until {self.values['status_topic']} says finished"
            )
            while not self.recording.complete(time.monotonic(), self.values["grace_s"]):
                self._executor.spin_once(timeout_sec=_SPIN_S)
            self._take_delivered()
            engine, published = self._detector_settings()
            messages = self.recording.messages()
            report = self.recording.report(
                messages, engine, published, None if out is None else str(out), self.values["bootstrap"]
            )
            with contextlib.ExitStack() as stack:
                if out is not None:
                    writer = stack.enter_context(open_bag_writer(out, storage=storage, force=self.values["force"]))
                    self.recording.write(writer, messages)
                # Inside the writer's block: a report that cannot be written leaves no bag either.
                if report_path is not None:
                    atomic_write_text(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
        except LeanEyeError as exc:
            self.get_logger().error(f"{exc}; nothing written")
            return 1
        print(report.format(), flush=True)
        return 0

    def interrupted(self) -> int:
        self.get_logger().info(
            f"interrupted before the playback was recorded ({self.recording.answered} frames of detections "
            f"received): no output bag written"
        )
        return 1

    def _outputs(self) -> tuple[Path | None, str | None, Path | None]:
        """out (None: no bag), its storage and the report path, checked before anything is recorded."""
        values = self.values
        problem = first_problem(RECORDER_PARAMETERS, values)
        if problem is not None:
            raise LeanEyeError(f"parameter {problem}")
        out = Path(values["out"]) if values["out"] else None
        storage = (
            None if out is None else output_storage(out, None if values["storage"] == "auto" else values["storage"])
        )
        report_path = Path(values["report"]) if values["report"] else None
        for what, path in (("out", out), ("report", report_path)):
            if path is None:
                continue
            if path.exists() and not values["force"]:
                raise LeanEyeError(f"{what} {path} already exists; set force:=true to replace it")
            check_output_path(path, True, what)
        return out, storage, report_path

    def _wait_for_detector(self) -> None:
        """Spin until the detector's detections and latency publishers reach this node."""
        needed = [
            self._recorded[self.recording.detections_topic],
            self._recorded[self.recording.latency_topic],
        ]
        while not all(subscription.get_publisher_count() > 0 for subscription in needed):
            self.get_logger().info(
                f"waiting for the detector's {' and '.join(s.topic_name for s in needed)}",
                throttle_duration_sec=_WAITING_LOG_PERIOD_S,
            )
            self._executor.spin_once(timeout_sec=_SPIN_S)

    def _take_delivered(self) -> None:
        """Run the callbacks of messages already delivered: until a pass of _DRAIN_S brings nothing new."""
        while True:
            received, deadline = self.recording.received, time.monotonic() + _DRAIN_S
            while (remaining := deadline - time.monotonic()) > 0:
                self._executor.spin_once(timeout_sec=remaining)
            if self.recording.received == received:
                return

    def _on_message(self, topic: str, data: bytes) -> None:
        self.recording.add(topic, data, time.monotonic())

    def _on_status(self, msg: Any) -> None:
        self.recording.status(PlaybackSummary.from_msg(msg), bool(msg.finished), time.monotonic())

    def _detector_settings(self) -> tuple[str, dict]:
        """The detector's engine and thresholds, asked from its parameter service; "unknown" where it
        does not answer (the summary still stands, naming what it could not learn)."""
        detector = self.values["detector"]
        names = ["engine_dir", *_DETECTOR_SETTINGS]
        values: dict[str, Any] = {}
        client = AsyncParameterClient(self, detector)
        if client.wait_for_services(timeout_sec=_PARAMETER_TIMEOUT_S):
            future = client.get_parameters(names)
            self._executor.spin_until_future_complete(future, timeout_sec=_PARAMETER_TIMEOUT_S)
            if future.done() and future.result() is not None:
                values = dict(zip(names, (parameter_value_to_python(v) for v in future.result().values)))
        if not values:
            self.get_logger().warning(f"{detector}: its parameters did not come back; the summary says 'unknown'")
        engine = values.get("engine_dir") or f"{detector} (engine unknown)"
        settings = {summary: values.get(name) for name, summary in _DETECTOR_SETTINGS.items()}
        return engine, {summary: "unknown" if value is None else value for summary, value in settings.items()}

    def destroy_node(self) -> None:
        self._executor.remove_node(self)
        self._executor.shutdown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_to_completion(BagRecorderNode, NODE_NAME, args)
