"""`ros2 run leaneye sim_camera_node`: a simulated camera publishing the procedural driving scenes.

Each frame of `leaneye.scenes.render.SceneSequence` (seed, width x height) goes out at `rate` Hz as

    image_topic (default /camera/image_raw)   sensor_msgs/Image bgr8 (qos_reliability: best_effort
                                               is the sensor-data profile cameras use)
    <image_topic>/compressed                   sensor_msgs/CompressedImage jpeg (publish_compressed)
    /ground_truth/detections                   vision_msgs/Detection2DArray, labelled objects
    /ground_truth/ignore_regions               vision_msgs/Detection2DArray, ignore regions
    /ground_truth/label_info                   vision_msgs/LabelInfo, once, transient-local

the topics and messages of a scene bag (leaneye.scenes.dataset), all stamped alike. With
publish_clock the node also publishes /clock: simulated time starts at the wall-clock time of the
node's start and advances exactly 1/rate per frame, and the frames carry it, so use_sim_time nodes
need nothing else. Without it the frames are stamped with the node's clock (simulated time under
use_sim_time and someone else's /clock). Frames are paced by the steady clock either way.

`frames` > 0: after that many the node says so and, with shutdown_when_done, exits 0. A bad
parameter: one log line and exit code 1. Docs: docs/ros-simulation.md.
"""

from __future__ import annotations

import dataclasses
import time

from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from .. import msgs
from ..parameters import QOS_RELIABILITY, ParameterSpec, first_problem
from ..scenes.classes import SCENE_CLASSES
from ..scenes.dataset import GROUND_TRUTH_TOPIC, IGNORE_TOPIC, IMAGE_TOPIC, LABEL_INFO_TOPIC, ground_truth_messages
from ..scenes.render import SceneSequence
from .node_support import declare_parameters, run_to_completion

NODE_NAME = "sim_camera"
COMPRESSED_SUFFIX = "/compressed"  # image_transport's name of the CompressedImage topic
_SPIN_S = 0.1  # longest single wait in run(), so that the end and Ctrl-C are noticed
_ACK_TIMEOUT = Duration(seconds=5.0)  # for the last reliable messages to reach their subscribers before exiting
_WAITING_LOG_PERIOD_S = 10.0

SIM_CAMERA_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "seed", 0, "scene sequence: the same seed gives the same frames and ground truth", low=0, high=2**31 - 1
    ),
    ParameterSpec("rate", 10.0, "frames per second (steady clock); rendering bounds it", low=0.01, high=1000.0),
    ParameterSpec("width", 1224, "image width in pixels", low=16, high=8192),
    ParameterSpec("height", 370, "image height in pixels", low=16, high=8192),
    ParameterSpec("frame_id", "camera", "header.frame_id of the images and the ground truth"),
    ParameterSpec("image_topic", IMAGE_TOPIC, "sensor_msgs/Image (bgr8) topic"),
    ParameterSpec(
        "publish_compressed", False, "also publish sensor_msgs/CompressedImage (jpeg) on <image_topic>/compressed"
    ),
    ParameterSpec("frames", 0, "stop after this many frames (0: endless)", low=0, high=2**31 - 1),
    ParameterSpec("shutdown_when_done", True, "after `frames` frames exit 0 (false: stay up, LabelInfo still latched)"),
    ParameterSpec(
        "qos_reliability",
        "best_effort",
        "image publishers: best_effort (the sensor-data profile) or reliable",
        choices=QOS_RELIABILITY,
    ),
    ParameterSpec(
        "publish_clock",
        False,
        "publish /clock: simulated time from the node's start, advancing 1/rate per frame; frames carry it",
    ),
    ParameterSpec(
        "wait_for_subscriber", False, "hold the first frame until the image topic (or its /compressed) has a subscriber"
    ),
)


class SimCameraNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.values = declare_parameters(self, SIM_CAMERA_PARAMETERS)
        self.types = msgs.GeneratedTypes()
        self.published = 0
        self.done = False
        self._said_no_clock = False
        self._executor: SingleThreadedExecutor | None = None
        self.problem = first_problem(SIM_CAMERA_PARAMETERS, self.values)
        if self.problem is not None:
            self.get_logger().error(f"parameter {self.problem}")
            return
        values = self.values
        self.sequence = SceneSequence(
            values["seed"], (values["width"], values["height"]), values["rate"], start_ns=time.time_ns()
        )
        image_qos = qos_profile_sensor_data if values["qos_reliability"] == "best_effort" else QoSProfile(depth=10)
        reliable = QoSProfile(depth=10)
        self._images = self.create_publisher(Image, values["image_topic"], image_qos)
        self._compressed = (
            self.create_publisher(CompressedImage, values["image_topic"] + COMPRESSED_SUFFIX, image_qos)
            if values["publish_compressed"]
            else None
        )
        self._truth = self.create_publisher(Detection2DArray, GROUND_TRUTH_TOPIC, reliable)
        self._ignored = self.create_publisher(Detection2DArray, IGNORE_TOPIC, reliable)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_info = self.create_publisher(LabelInfo, LABEL_INFO_TOPIC, latched)
        self._clock_publisher = self.create_publisher(ClockMsg, "/clock", reliable) if values["publish_clock"] else None
        # Steady pacing: a ROS-time timer under use_sim_time would wait for the /clock this node publishes.
        self._timer = self.create_timer(1.0 / values["rate"], self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        outputs = self._images.topic_name + (f" (+ {COMPRESSED_SUFFIX})" if self._compressed else "")
        self.get_logger().info(
            f"publishing scenes of seed {values['seed']}, {values['width']}x{values['height']} at "
            f"{values['rate']:g} Hz on {outputs}" + (", /clock" if self._clock_publisher else "")
        )

    def _tick(self) -> None:
        if self.done or not self._ready():
            return
        frame = self.sequence.frame()
        if self._clock_publisher is not None:
            # /clock first, so that a use_sim_time subscriber already has the frame's time when the frame arrives.
            self._clock_publisher.publish(msgs.clock_msg(frame.stamp_ns, self.types))
        else:
            frame = dataclasses.replace(frame, stamp_ns=self.get_clock().now().nanoseconds)
        frame_id = self.values["frame_id"]
        head, truth, ignored = ground_truth_messages(frame, frame_id, self.types)
        if self.published == 0:
            self._label_info.publish(msgs.label_info_msg(head, SCENE_CLASSES, types=self.types))
        self._images.publish(msgs.image_msg(frame.image, frame.stamp_ns, frame_id, types=self.types))
        if self._compressed is not None:
            self._compressed.publish(msgs.compressed_image_msg(frame.image, frame.stamp_ns, frame_id, types=self.types))
        self._truth.publish(truth)
        self._ignored.publish(ignored)
        self.published += 1
        if self.values["frames"] and self.published >= self.values["frames"]:
            self.done = True
            self.destroy_timer(self._timer)
            ending = "exiting" if self.values["shutdown_when_done"] else "staying up (shutdown_when_done false)"
            self.get_logger().info(f"published all {self.published} frames; {ending}")

    def _ready(self) -> bool:
        """Whether a frame may go out now: a subscriber, if waited for, and a running clock to stamp it with."""
        if self.values["wait_for_subscriber"]:
            images = [self._images] + ([self._compressed] if self._compressed else [])
            if not any(publisher.get_subscription_count() for publisher in images):
                self.get_logger().info(
                    f"waiting for a subscriber on {self._images.topic_name} (wait_for_subscriber)",
                    throttle_duration_sec=_WAITING_LOG_PERIOD_S,
                )
                return False
        if self._clock_publisher is None and self.get_clock().now().nanoseconds == 0:
            # use_sim_time before the first /clock: time 0 would stamp every frame alike.
            if not self._said_no_clock:
                self._said_no_clock = True
                self.get_logger().info("use_sim_time: waiting for /clock before the first frame")
            return False
        return True

    def run(self) -> int:
        """Publish until `frames` are out (with shutdown_when_done) or Ctrl-C; 1 on a bad parameter."""
        if self.problem is not None:
            return 1
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self)
        while not (self.done and self.values["shutdown_when_done"]):
            self._executor.spin_once(timeout_sec=_SPIN_S)
        for publisher in self.publishers:
            publisher.wait_for_all_acked(_ACK_TIMEOUT)
        return 0

    def interrupted(self) -> int:
        """Ctrl-C is how an endless camera stops: a clean exit."""
        self.get_logger().info(f"stopped after {self.published} frames")
        return 0

    def destroy_node(self) -> None:
        if self._executor is not None:
            self._executor.remove_node(self)
            self._executor.shutdown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_to_completion(SimCameraNode, NODE_NAME, args)
