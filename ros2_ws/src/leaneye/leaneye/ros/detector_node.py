"""`ros2 run leaneye detector_node`: the LeanEye detector as a ROS 2 lifecycle node.

    configure   load and check the engine (Detector.from_engine: the blank-input run included) and
                create the lifecycle publishers; a missing or invalid engine or a bad parameter
                fails the transition with one log line
    activate    subscribe to the camera, start the inference worker, publish ~/label_info
    deactivate  unsubscribe, stop the worker        cleanup  free the engine and the publishers

With `autostart` (the default) the node configures and activates itself once it spins, so a plain
`ros2 launch` runs; under a lifecycle manager set autostart:=false.

The subscription callback only leaves the newest frame in a one-slot mailbox (leaneye.mailbox); a
worker thread takes it, runs the ROS-free frame pipeline (leaneye.pipeline.FrameProcessor with
rclpy's generated classes) and publishes. A camera faster than inference costs counted drops,
never a queue. Topics, parameters and QoS: docs/ros.md.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from leaneye_msgs.msg import FrameLatency
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from .. import msgs
from ..backends import parse_extra_options
from ..detector import Detector
from ..errors import LeanEyeError, first_line
from ..latency import RecentFrames
from ..mailbox import FrameMailbox
from ..parameters import DETECTOR_PARAMETERS, PARAMETERS_BY_NAME, check_parameters
from ..pipeline import FrameProcessor
from ..vision.annotate import draw_detections
from ..vision.postprocess import DetectionSettings
from .node_support import declare_parameters, parameter_value, spin_until_shutdown

NODE_NAME = "leaneye"  # ~/detections is then /leaneye/detections, as `leaneye replay` writes it
NO_IMAGE_WARNING_S = 5.0  # say once that the image topic is silent after this long (and keep waiting)
DIAGNOSTICS_PERIOD_S = 1.0
_TAKE_TIMEOUT_S = 0.5  # the worker wakes this often to notice deactivation
_THRESHOLDS = {"conf_threshold": "conf", "iou_threshold": "iou", "max_detections": "max_detections"}


class DetectorNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self, DETECTOR_PARAMETERS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.types = msgs.GeneratedTypes()
        self.detector: Detector | None = None
        self.processor: FrameProcessor | None = None
        self._outputs: dict[str, Any] = {}
        self._subscription = None
        self._running_timers: list = []
        self._worker: threading.Thread | None = None
        self._mailbox = FrameMailbox()
        self._recent = RecentFrames()
        self._counts = {"received": 0, "published": 0, "bad": 0}
        self._bad_reasons: set[str] = set()
        self._activated_at = 0.0
        self._said_no_image = False
        self._image_topic = ""
        if self._param("autostart"):
            self._start_timer = self.create_timer(0.0, self._autostart, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _param(self, name: str) -> Any:
        return parameter_value(self, PARAMETERS_BY_NAME[name])

    def _autostart(self) -> None:
        self.destroy_timer(self._start_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # --- lifecycle -------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = {spec.name: self._param(spec.name) for spec in DETECTOR_PARAMETERS}
        problem = check_parameters(values)
        if problem is not None:
            self.get_logger().error(f"configure failed: parameter {problem}")
            return TransitionCallbackReturn.FAILURE
        try:
            self.detector = Detector.from_engine(
                values["engine_dir"],
                conf=values["conf_threshold"],
                iou=values["iou_threshold"],
                max_detections=values["max_detections"],
                threads=values["num_threads"],
                device=values["device"] or None,
                extra=parse_extra_options(values["backend_options"], "parameter backend_options"),
            )
            self.processor = FrameProcessor(self.detector, self.types, values["class_id"], classes=values["classes"])
        except Exception as exc:  # one line naming the file and the reason: no traceback, no retry loop
            message = str(exc) if isinstance(exc, LeanEyeError) else f"{values['engine_dir']}: {first_line(exc)}"
            self.get_logger().error(f"configure failed: {message}")
            self._release_engine()
            return TransitionCallbackReturn.FAILURE
        reliable = QoSProfile(depth=10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._outputs = {
            "detections": self.create_lifecycle_publisher(Detection2DArray, "~/detections", reliable),
            "label_info": self.create_lifecycle_publisher(LabelInfo, "~/label_info", latched),
            "latency": self.create_lifecycle_publisher(FrameLatency, "~/latency", reliable),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", reliable),
        }
        if values["publish_debug_image"]:
            self._outputs["debug_image"] = self.create_lifecycle_publisher(Image, "~/debug_image", QoSProfile(depth=1))
        manifest = self.detector.manifest
        self.get_logger().info(
            f"configured: {values['engine_dir']} ({manifest.backend}, {manifest.precision}, "
            f"{len(manifest.class_names)} classes, input {manifest.input.shape})"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        self._outputs["label_info"].publish(
            self.processor.label_info(msgs.header(self.get_clock().now().nanoseconds, "", self.types))
        )
        self._mailbox = FrameMailbox()
        self._recent = RecentFrames()
        self._counts = {"received": 0, "published": 0, "bad": 0}
        self._bad_reasons = set()
        self._activated_at = time.monotonic()
        self._said_no_image = False
        self._worker = threading.Thread(target=self._work, args=(self._mailbox,), name="leaneye-inference", daemon=True)
        self._worker.start()
        # Steady clocks: under use_sim_time the node's clock stands still until /clock arrives, and a
        # bag player waits for this subscription before it sends any.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._running_timers = [
            self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=steady),
            self.create_timer(0.5, self._watch_input, clock=steady),
        ]
        self._watch_input()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_running()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_engine()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_running()
        self._release_engine()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_running()
        self._release_engine()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._stop_running()
        self._release_engine()
        super().destroy_node()

    def _stop_running(self) -> None:
        for timer in self._running_timers:
            self.destroy_timer(timer)
        self._running_timers = []
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._mailbox.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _release_engine(self) -> None:
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if self.detector is not None:
            self.detector.deactivate()
        self.detector = self.processor = None

    # --- input -----------------------------------------------------------------------------------

    def _watch_input(self) -> None:
        """Subscribe once the input's type is known (input_type auto: from the graph); say once when
        no image has arrived NO_IMAGE_WARNING_S after activation, and keep waiting."""
        if self._subscription is None:
            self._subscribe()
        if not self._said_no_image and self._counts["received"] == 0:
            if time.monotonic() - self._activated_at >= NO_IMAGE_WARNING_S:
                self._said_no_image = True
                where = self._image_topic or f"{self.resolve_topic_name(self._param('image_topic'))} (or /compressed)"
                self.get_logger().warning(
                    f"no image on {where} after {NO_IMAGE_WARNING_S:g} s; still waiting (check image_topic, the "
                    f"remapping and qos_reliability against the camera's)"
                )

    def _subscribe(self) -> None:
        topic = self.resolve_topic_name(self._param("image_topic"))
        input_type = self._param("input_type")
        if input_type == "auto":
            offered = dict(self.get_topic_names_and_types())
            if msgs.IMAGE in offered.get(topic, ()):
                input_type = "image"
            elif msgs.COMPRESSED_IMAGE in offered.get(f"{topic}/compressed", ()):
                input_type = "compressed"
            else:
                return  # asked again by the next _watch_input
        msg_class, msgtype, name = (
            (Image, msgs.IMAGE, topic)
            if input_type == "image"
            else (CompressedImage, msgs.COMPRESSED_IMAGE, f"{topic}/compressed")
        )
        reliability = self._param("qos_reliability")
        qos = QoSProfile(
            depth=self._param("qos_depth"),
            reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        )
        self._subscription = self.create_subscription(msg_class, name, self._on_image, qos)
        self._image_topic = name
        self.get_logger().info(f"subscribed to {name} ({msgtype}, {reliability}, depth {qos.depth})")

    def _on_image(self, msg: Any) -> None:
        self._counts["received"] += 1
        self._mailbox.put((msg, time.perf_counter()))

    # --- the worker ------------------------------------------------------------------------------

    def _work(self, mailbox: FrameMailbox) -> None:
        while True:
            item = mailbox.take(_TAKE_TIMEOUT_S)
            if item is None:
                if mailbox.closed:
                    return
                continue
            try:
                self._process(*item, mailbox)
            except Exception as exc:  # a frame the pipeline refuses (NaN outputs, ...) is logged and skipped
                self._bad_frame(f"{self._param('engine_dir')}: {first_line(exc)}")

    def _process(self, msg: Any, received: float, mailbox: FrameMailbox) -> None:
        processor = self.processor
        started = time.perf_counter()
        try:
            image = msgs.image_from_any_msg(msg)
        except LeanEyeError as exc:
            self._bad_frame(str(exc))
            return
        frame = processor.process(image, msg.header, (time.perf_counter() - started) * 1e3)
        self._outputs["detections"].publish(frame.message)
        published = time.perf_counter()
        age_ns = self.get_clock().now().nanoseconds - msgs.stamp_to_ns(msg.header.stamp)
        latency = dataclasses.replace(
            frame.latency,
            receipt_to_publish_ms=(published - received) * 1e3,
            age_ms=age_ns / 1e6,
            frames_dropped=mailbox.dropped,
        )
        self._outputs["latency"].publish(processor.latency_msg(msg.header, latency))
        self._counts["published"] += 1
        self._recent.add(time.monotonic(), latency.receipt_to_publish_ms)
        debug = self._outputs.get("debug_image")
        if debug is not None and debug.get_subscription_count() > 0:
            annotated = draw_detections(image, frame.published)
            stamp = msgs.stamp_to_ns(msg.header.stamp)
            debug.publish(msgs.image_msg(annotated, stamp, msg.header.frame_id, types=self.types))

    def _bad_frame(self, reason: str) -> None:
        self._counts["bad"] += 1
        if reason not in self._bad_reasons:
            self._bad_reasons.add(reason)
            self.get_logger().warning(f"skipped a frame on {self._image_topic}: {reason}")

    # --- diagnostics and parameters --------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        recent = self._recent.summary(time.monotonic())
        manifest = self.detector.manifest
        values = {
            "fps": f"{recent['fps']:.1f}",
            "p50_ms": f"{recent['p50_ms']:.2f}",
            "p99_ms": f"{recent['p99_ms']:.2f}",
            "frames_received": self._counts["received"],
            "frames_published": self._counts["published"],
            "frames_dropped": self._mailbox.dropped,
            "drop_policy": "one-frame mailbox: a newer frame replaces one waiting for inference",
            "bad_frames": self._counts["bad"],
            "engine": self._param("engine_dir"),
            "backend": manifest.backend,
            "precision": manifest.precision,
            "image_topic": self._image_topic or "(waiting for the topic to appear)",
        }
        level, message = ("OK", "detecting") if recent["frames"] else ("WARN", "no frames in the last 5 s")
        header = msgs.header(self.get_clock().now().nanoseconds, "", self.types)
        self._outputs["diagnostics"].publish(
            msgs.diagnostic_array_msg(
                header,
                f"leaneye: {self.get_fully_qualified_name()}",
                manifest.model,
                level,
                message,
                values,
                self.types,
            )
        )

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        values = {p.name: (tuple(p.value or ()) if p.name == "classes" else p.value) for p in parameters}
        detector, processor = self.detector, self.processor
        problem = check_parameters(values, detector.class_names if detector is not None else None)
        if problem is None and detector is not None and _THRESHOLDS.keys() & values.keys():
            current = {key: getattr(detector.settings, field) for key, field in _THRESHOLDS.items()}
            merged = {**current, **{k: v for k, v in values.items() if k in _THRESHOLDS}}
            try:
                settings = DetectionSettings(**{_THRESHOLDS[k]: v for k, v in merged.items()})
            except LeanEyeError as exc:
                problem = str(exc)
            else:
                detector.update_settings(settings)
        if problem is not None:
            return SetParametersResult(successful=False, reason=problem)
        if processor is not None:
            if "classes" in values:
                processor.set_classes(values["classes"])
            if "class_id" in values:
                processor.class_id = values["class_id"]
        return SetParametersResult(successful=True)


def main(args: list[str] | None = None) -> None:
    spin_until_shutdown(DetectorNode, args)
