"""The ROS-free pieces of the detector node, without a graph: the one-frame mailbox, the parameter
definitions and their checks, the class filter and live thresholds, the diagnostics window and
message, the clock message, and the debug image drawing."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import builtin_rows, write_builtin_engine

from leaneye import msgs
from leaneye.detector import Detector
from leaneye.errors import LeanEyeError
from leaneye.latency import RecentFrames
from leaneye.mailbox import FrameMailbox
from leaneye.parameters import DETECTOR_PARAMETERS, PARAMETERS_BY_NAME, check_parameters
from leaneye.pipeline import FrameProcessor
from leaneye.vision.annotate import draw_detections
from leaneye.vision.postprocess import DetectionSettings

pytestmark = pytest.mark.runtime_core

# Network pixels of a 96x320 input: a car, a person, and a truck with a low score.
EMITTED = [([20, 20, 60, 60], 0, 0.9), ([150, 30, 200, 80], 1, 0.6), ([250, 10, 300, 40], 2, 0.1)]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    engine = write_builtin_engine(tmp_path_factory.mktemp("engine") / "engine", builtin_rows(EMITTED))
    with Detector.from_engine(engine) as detector:
        yield detector


def test_the_mailbox_keeps_the_newest_frame_and_counts_what_it_replaced():
    mailbox = FrameMailbox()
    assert mailbox.take(timeout=0.01) is None
    assert mailbox.put(1) is False
    assert mailbox.put(2) is True and mailbox.put(3) is True
    assert mailbox.take(timeout=0.01) == 3 and mailbox.dropped == 2
    assert mailbox.take(timeout=0.01) is None


def test_the_mailbox_wakes_a_waiting_worker_and_close_ends_it():
    mailbox, taken = FrameMailbox(), []

    def worker():
        while (item := mailbox.take()) is not None:
            taken.append(item)

    thread = threading.Thread(target=worker)
    thread.start()
    mailbox.put("a")
    deadline = time.monotonic() + 5
    while not taken and time.monotonic() < deadline:
        time.sleep(0.01)
    mailbox.close()
    thread.join(5)
    assert not thread.is_alive() and taken == ["a"] and mailbox.closed


def test_parameter_checks_name_the_parameter_and_what_was_expected():
    assert check_parameters({spec.name: spec.default for spec in DETECTOR_PARAMETERS} | {"engine_dir": "e"}) is None
    cases = {
        "conf_threshold": (1.5, "conf_threshold: expected a number in [0, 1], got 1.5"),
        "iou_threshold": (float("nan"), "iou_threshold: expected a number in [0, 1], got nan"),
        "max_detections": (0, "max_detections: expected a number in [1, 10000], got 0"),
        "qos_depth": (2.0, "qos_depth: expected a int, got 2.0"),
        "input_type": ("raw", "input_type: expected one of image, compressed, auto, got 'raw'"),
        "qos_reliability": ("sometimes", "qos_reliability: expected one of best_effort, reliable"),
        "classes": ("car", "classes: expected a list of strings, got 'car'"),
        "publish_debug_image": (1, "publish_debug_image: expected a bool, got 1"),
        "engine_dir": ("", "engine_dir: expected an engine directory"),
        "speed": (1, "speed: not a parameter of the detector node"),
    }
    for name, (value, reason) in cases.items():
        problem = check_parameters({name: value})
        assert problem is not None and problem.startswith(reason), (name, problem)
    assert check_parameters({"conf_threshold": 0}) is None  # an integer where a double is expected
    assert check_parameters({"classes": ["car", "bus"]}, ("car", "person")) == (
        "classes: bus not among the engine's classes (car, person)"
    )


def test_only_thresholds_filters_and_output_naming_change_live():
    live = {spec.name for spec in DETECTOR_PARAMETERS if spec.live}
    assert live == {"conf_threshold", "iou_threshold", "max_detections", "classes", "class_id"}
    assert PARAMETERS_BY_NAME["qos_reliability"].default == "best_effort"  # the sensor-data profile


def test_the_class_filter_and_new_thresholds_apply_from_the_next_frame(detector):
    frame = np.zeros((96, 320, 3), np.uint8)
    processor = FrameProcessor(detector, msgs.bag_types(), class_id="name")
    header = msgs.header(5, "cam")

    def published() -> list[str]:
        return msgs.boxes_from_detection_array(processor.process(frame, header).message)[2]

    names = detector.class_names
    assert published() == [names[0], names[1]]
    processor.set_classes([names[1]])
    assert published() == [names[1]]
    detector.update_settings(DetectionSettings(conf=0.05))
    processor.set_classes([names[1], names[2]])
    assert published() == [names[1], names[2]]
    processor.set_classes(())
    assert published() == [names[0], names[1], names[2]]
    with pytest.raises(LeanEyeError, match="classes: unicorn not among the engine's classes"):
        processor.set_classes(["unicorn"])
    detector.update_settings(DetectionSettings())


def test_recent_frames_give_rate_and_percentiles_over_the_window():
    recent = RecentFrames(window_s=2.0)
    assert recent.summary(0.0) == {"fps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "frames": 0}
    for index in range(20):
        recent.add(10.0 + index * 0.1, float(index))
    summary = recent.summary(11.9)
    assert summary["frames"] == 20 and summary["fps"] == 10.0 and summary["p50_ms"] == 9.5
    assert recent.summary(13.0)["frames"] == 10  # the first second has left the window
    assert recent.summary(20.0)["frames"] == 0


def test_diagnostics_and_clock_messages_are_plain_data():
    store = msgs.typestore()
    header = msgs.header(2_500_000_000, "")
    array = msgs.diagnostic_array_msg(header, "leaneye: /leaneye", "model.onnx", "WARN", "no frames", {"fps": "0.0"})
    back = store.deserialize_cdr(store.serialize_cdr(array, msgs.msgtype_of(array)), msgs.msgtype_of(array))
    assert back.status[0].level == store.types["diagnostic_msgs/msg/DiagnosticStatus"].WARN
    assert msgs.diagnostic_values(back) == {"fps": "0.0"} and back.status[0].hardware_id == "model.onnx"
    with pytest.raises(LeanEyeError, match="level: expected one of OK, WARN, ERROR, STALE"):
        msgs.diagnostic_array_msg(header, "n", "h", "FINE", "", {})
    clock = msgs.clock_msg(2_500_000_001)
    assert msgs.msgtype_of(clock) == "rosgraph_msgs/msg/Clock" and msgs.stamp_to_ns(clock.clock) == 2_500_000_001


def test_the_debug_image_draws_boxes_on_a_copy(detector):
    frame = np.full((96, 320, 3), 30, np.uint8)
    detections = detector.detect(frame)
    annotated = draw_detections(frame, detections)
    assert (frame == 30).all()  # untouched
    x1, y1, x2, y2 = detections.boxes[0].round().astype(int)
    assert (annotated[y2, x1:x2] != 30).any(axis=-1).all()  # the bottom edge of the first box
    assert (annotated[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5] == 30).all()  # its inside stays clear
