"""The detector node on a real ROS 2 graph: lifecycle, what it publishes, its mailbox under a burst,
live parameters, frame age under simulated time, the debug image and diagnostics.

Each test runs the node in-process with its own rclpy context (conftest.graph) and talks to it
through real topics and services, as another node would.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import builtin_rows, write_builtin_engine

from leaneye import msgs
from leaneye.detector import Detector
from leaneye.scenes.render import SceneSequence

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from leaneye_msgs.msg import FrameLatency  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from leaneye.ros.detector_node import DetectorNode  # noqa: E402

TYPES = msgs.GeneratedTypes()
# The constant engine's output in network pixels (its input is 96x320): a car and a person, and a
# truck below the default threshold.
EMITTED = [([20, 20, 60, 60], 0, 0.9), ([150, 30, 200, 80], 1, 0.6), ([250, 10, 300, 40], 2, 0.1)]


@pytest.fixture(scope="module")
def constant_engine(tmp_path_factory) -> Path:
    return write_builtin_engine(tmp_path_factory.mktemp("engine") / "engine", builtin_rows(EMITTED))


def detector(graph, engine: Path | str, **params) -> DetectorNode:
    overrides = [Parameter("engine_dir", value=str(engine)), Parameter("qos_reliability", value="reliable")]
    overrides += [Parameter(name, value=value) for name, value in params.items()]
    return graph.add(DetectorNode(parameter_overrides=overrides, context=graph.context))


class Client:
    """The test's own node: publishes frames, collects what the detector publishes."""

    def __init__(self, graph, image_topic: str = "/camera/image_raw"):
        self.graph = graph
        self.node = graph.node("test_client")
        self.detections: list = []
        self.latency: list = []
        qos = QoSProfile(depth=50)
        self.node.create_subscription(Detection2DArray, "/leaneye/detections", self.detections.append, qos)
        self.node.create_subscription(FrameLatency, "/leaneye/latency", self.latency.append, qos)
        self.images = self.node.create_publisher(Image, image_topic, qos)
        self.compressed = self.node.create_publisher(CompressedImage, f"{image_topic}/compressed", qos)

    def wait_subscribed(self, publisher) -> None:
        assert self.graph.spin_until(lambda: publisher.get_subscription_count() > 0, 15), (
            "the detector never subscribed"
        )

    def send(self, image: np.ndarray, stamp_ns: int, frame_id: str = "camera_front", compressed: bool = False):
        publisher = self.compressed if compressed else self.images
        build = msgs.compressed_image_msg if compressed else msgs.image_msg
        publisher.publish(build(image, stamp_ns, frame_id, types=TYPES))

    def wait_detections(self, count: int, timeout: float = 15.0) -> list:
        assert self.graph.spin_until(lambda: len(self.detections) >= count, timeout), (
            f"{len(self.detections)} of {count} Detection2DArray messages arrived"
        )
        return self.detections

    def call(self, service_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"{name} not offered"
        future = client.call_async(request)
        assert self.graph.spin_until(future.done, timeout), f"{name} did not answer"
        return future.result()

    def state(self) -> str:
        return self.call(GetState, "/leaneye/get_state", GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, "/leaneye/change_state", request).success

    def set_parameters(self, **values):
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        return self.call(SetParameters, "/leaneye/set_parameters", request).results


def scene_frames(count: int, seed: int = 3) -> list:
    sequence = SceneSequence(seed=seed)
    return [sequence.frame() for _ in range(count)]


def test_a_frame_gives_detections_with_the_images_header_equal_to_detector_detect(graph, scene_engine):
    detector(graph, scene_engine)
    client = Client(graph)
    client.wait_subscribed(client.images)
    frames = scene_frames(3)
    for index, frame in enumerate(frames):
        client.send(frame.image, 1_700_000_000_000_000_000 + index * 100_000_000)
        client.wait_detections(index + 1)
    with Detector.from_engine(scene_engine) as reference:
        for index, (frame, message) in enumerate(zip(frames, client.detections)):
            assert message.header.frame_id == "camera_front"
            assert msgs.stamp_to_ns(message.header.stamp) == 1_700_000_000_000_000_000 + index * 100_000_000
            assert all(d.header == message.header for d in message.detections)
            boxes, scores, class_ids, _ = msgs.boxes_from_detection_array(message)
            expected = reference.detect(frame.image)
            assert len(expected) > 0
            np.testing.assert_allclose(boxes, expected.boxes, atol=1e-3)
            np.testing.assert_allclose(scores, expected.scores, atol=1e-6)
            assert class_ids == [str(i) for i in expected.class_ids]
    latency = client.latency[0]
    assert latency.header == client.detections[0].header
    assert latency.num_detections == len(client.detections[0].detections)
    assert 0 < latency.inference_ms < latency.total_ms <= latency.receipt_to_publish_ms


def test_frames_without_detections_are_published_empty(graph, constant_engine):
    detector(graph, constant_engine, conf_threshold=0.95)  # above every score the engine emits
    client = Client(graph)
    client.wait_subscribed(client.images)
    for index in range(3):  # one at a time: the mailbox keeps only the newest waiting frame
        client.send(np.zeros((96, 320, 3), np.uint8), (index + 1) * 1_000_000)
        messages = client.wait_detections(index + 1)
    assert [len(m.detections) for m in messages] == [0, 0, 0]
    assert [msgs.stamp_to_ns(m.header.stamp) for m in messages] == [1_000_000, 2_000_000, 3_000_000]


def test_label_info_reaches_a_subscriber_that_joins_late(graph, constant_engine):
    node = detector(graph, constant_engine, input_type="image")
    assert graph.spin_until(lambda: node._subscription is not None, 15)
    graph.spin_for(0.5)
    late = graph.node("late_subscriber")
    received = []
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    late.create_subscription(LabelInfo, "/leaneye/label_info", received.append, qos)
    assert graph.spin_until(lambda: received, 10)
    assert msgs.class_names_from_label_info(received[0]) == dict(enumerate(node.detector.class_names))
    assert received[0].threshold == pytest.approx(0.25)


def test_compressed_input_is_decoded(graph, constant_engine):
    detector(graph, constant_engine, input_type="compressed")
    client = Client(graph)
    client.wait_subscribed(client.compressed)
    assert client.images.get_subscription_count() == 0
    client.send(np.full((96, 320, 3), 80, np.uint8), 5_000, compressed=True)
    [message] = client.wait_detections(1)
    assert msgs.stamp_to_ns(message.header.stamp) == 5_000
    assert sorted(d.results[0].hypothesis.class_id for d in message.detections) == ["0", "1"]


def test_input_type_auto_takes_the_type_the_graph_offers(graph, constant_engine):
    Client(graph)  # offers both; auto takes the raw Image (no decoding)
    node = detector(graph, constant_engine, input_type="auto")
    assert graph.spin_until(lambda: node._subscription is not None, 15)
    assert node._image_topic == "/camera/image_raw"


def test_a_bad_frame_is_counted_logged_once_and_skipped(graph, constant_engine, capfd):
    node = detector(graph, constant_engine)
    client = Client(graph)
    client.wait_subscribed(client.images)
    good = msgs.image_msg(np.zeros((96, 320, 3), np.uint8), 1_000, "camera", types=TYPES)
    unsupported = msgs.image_msg(np.zeros((96, 320, 3), np.uint8), 2_000, "camera", types=TYPES)
    unsupported.encoding = "bayer_rggb16"
    short = msgs.image_msg(np.zeros((96, 320, 3), np.uint8), 3_000, "camera", types=TYPES)
    short.data = short.data[:-7]
    for message in (unsupported, short, unsupported, good):
        client.images.publish(message)
        graph.spin_for(0.2)
    [published] = client.wait_detections(1)
    assert msgs.stamp_to_ns(published.header.stamp) == 1_000
    assert node._counts["bad"] == 3
    log = capfd.readouterr().err
    assert log.count("bayer_rggb16") == 1, log
    assert log.count("expected step * height") == 1, log


def test_a_burst_faster_than_inference_keeps_the_newest_frame_counts_drops_and_memory_stays_flat(graph, scene_engine):
    node = detector(graph, scene_engine, qos_depth=100)
    client = Client(graph)
    client.wait_subscribed(client.images)
    image = scene_frames(1)[0].image
    # The warm round trip (the first one includes ONNX Runtime's first-run set-up, which
    # made the burst slower than the detector on a fast runner).
    round_trips = []
    for stamp in (1, 2, 3):
        started = time.perf_counter()
        client.send(image, stamp)
        client.wait_detections(stamp)
        round_trips.append(time.perf_counter() - started)
    inference_s = min(round_trips)

    def burst(first: int, count: int) -> int:
        # 3x the rate the detector manages: a frame every third of an inference.
        for index in range(first, first + count):
            client.send(image, index)
            graph.spin_for(inference_s / 3)
        last = first + count - 1
        for received in (client.detections, client.latency):
            assert graph.spin_until(lambda received=received: msgs.stamp_to_ns(received[-1].header.stamp) == last, 30)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # MB

    peak_after_first = burst(10, 30)
    peak_after_second = burst(100, 60)
    dropped = client.latency[-1].frames_dropped
    published = len(client.detections)
    assert dropped > 0 and node._mailbox.dropped == dropped
    assert published + dropped == 3 + 30 + 60, (published, dropped)  # every frame is published or counted
    # The newest frame is kept: the last frame of each burst was published.
    stamps = [msgs.stamp_to_ns(m.header.stamp) for m in client.detections]
    assert 39 in stamps and 159 in stamps
    # Memory: a queue would hold dozens of 1.36 MB frames more after the longer burst.
    assert peak_after_second - peak_after_first < 20, (peak_after_first, peak_after_second)


def test_live_parameter_changes_are_applied_and_bad_ones_refused_with_a_reason(graph, constant_engine):
    node = detector(graph, constant_engine)
    client = Client(graph)
    client.wait_subscribed(client.images)
    frame = np.zeros((96, 320, 3), np.uint8)

    def class_ids(stamp: int) -> list[str]:
        client.send(frame, stamp)
        assert graph.spin_until(lambda: any(msgs.stamp_to_ns(m.header.stamp) == stamp for m in client.detections))
        [message] = [m for m in client.detections if msgs.stamp_to_ns(m.header.stamp) == stamp]
        return sorted(d.results[0].hypothesis.class_id for d in message.detections)

    names = node.detector.class_names
    assert class_ids(1) == ["0", "1"]
    [result] = client.set_parameters(conf_threshold=0.05)
    assert result.successful
    assert class_ids(2) == ["0", "1", "2"]
    assert all(r.successful for r in client.set_parameters(classes=[names[1]], class_id="name"))
    assert class_ids(3) == [names[1]]
    refused = {
        "conf_threshold": (1.5, "conf_threshold"),
        "max_detections": (0, "max_detections"),
        "class_id": ("label", "class_id: expected one of index, name"),
        "classes": (["unicorn"], "classes: unicorn not among the engine's classes"),
        "engine_dir": ("/elsewhere", "read-only"),
    }
    for name, (value, reason) in refused.items():
        [result] = client.set_parameters(**{name: value})
        assert not result.successful and reason in result.reason, (name, result.reason)
    assert node.get_parameter("conf_threshold").value == pytest.approx(0.05)
    assert class_ids(4) == [names[1]]


def test_frame_age_follows_the_clock_under_use_sim_time(graph, constant_engine):
    detector(graph, constant_engine, use_sim_time=True)
    client = Client(graph)
    clock = client.node.create_publisher(Clock, "/clock", 10)
    client.wait_subscribed(client.images)
    stamp = 1_000_000_000_000
    for _ in range(10):  # the node's time source picks /clock up once subscribed
        clock.publish(msgs.clock_msg(stamp + 250_000_000, TYPES))
        graph.spin_for(0.1)
    client.send(np.zeros((96, 320, 3), np.uint8), stamp)
    client.wait_detections(1)
    assert graph.spin_until(lambda: client.latency, 5)
    assert client.latency[0].age_ms == pytest.approx(250.0, abs=0.01)


def test_debug_image_is_built_only_while_someone_subscribes(graph, constant_engine):
    node = detector(graph, constant_engine)
    client = Client(graph)
    client.wait_subscribed(client.images)
    frame = np.full((96, 320, 3), 40, np.uint8)
    client.send(frame, 1)
    client.wait_detections(1)
    assert node._outputs["debug_image"].get_subscription_count() == 0
    debug: list = []
    client.node.create_subscription(Image, "/leaneye/debug_image", debug.append, 10)
    assert graph.spin_until(lambda: node._outputs["debug_image"].get_subscription_count() == 1, 10)
    client.send(frame, 2)
    client.wait_detections(2)
    assert graph.spin_until(lambda: debug, 10)
    [annotated] = debug
    assert msgs.stamp_to_ns(annotated.header.stamp) == 2 and annotated.header.frame_id == "camera_front"
    pixels = msgs.image_from_msg(annotated)
    assert pixels.shape == frame.shape and (pixels != frame).any()  # boxes drawn


def test_diagnostics_come_at_one_hertz_with_rate_latency_and_drops(graph, constant_engine):
    detector(graph, constant_engine)
    client = Client(graph)
    diagnostics: list = []
    client.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    client.wait_subscribed(client.images)
    for index in range(5):
        client.send(np.zeros((96, 320, 3), np.uint8), index + 1)
        client.wait_detections(index + 1)
    graph.spin_until(lambda: len(diagnostics) >= 4, 8)
    arrival = [msgs.stamp_to_ns(m.header.stamp) / 1e9 for m in diagnostics]
    assert len(diagnostics) >= 3
    assert np.diff(arrival) == pytest.approx([1.0] * (len(arrival) - 1), abs=0.2)
    values = msgs.diagnostic_values(diagnostics[-1])
    assert values["frames_published"] == "5" and values["frames_dropped"] == "0"
    assert values["backend"] == "onnxruntime" and values["precision"] == "fp32"
    assert float(values["p50_ms"]) > 0 and float(values["fps"]) > 0
    assert diagnostics[-1].status[0].name == "leaneye: /leaneye"


def test_lifecycle_transitions_through_the_services(graph, constant_engine):
    node = detector(graph, constant_engine, autostart=False)
    client = Client(graph)
    assert client.state() == "unconfigured"
    graph.spin_for(0.5)
    assert client.images.get_subscription_count() == 0 and node.detector is None
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.state() == "inactive" and node.detector is not None
    assert client.images.get_subscription_count() == 0
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    assert client.state() == "active"
    client.wait_subscribed(client.images)
    client.send(np.zeros((96, 320, 3), np.uint8), 1)
    client.wait_detections(1)
    assert client.transition(Transition.TRANSITION_DEACTIVATE)
    assert graph.spin_until(lambda: client.images.get_subscription_count() == 0, 5)
    assert client.transition(Transition.TRANSITION_CLEANUP)
    assert client.state() == "unconfigured" and node.detector is None
    assert client.transition(Transition.TRANSITION_CONFIGURE)
    assert client.transition(Transition.TRANSITION_ACTIVATE)
    client.wait_subscribed(client.images)


def test_autostart_activates_without_a_lifecycle_manager(graph, constant_engine):
    detector(graph, constant_engine)
    client = Client(graph)
    client.wait_subscribed(client.images)
    assert client.state() == "active"


@pytest.mark.parametrize(
    "engine, reason",
    [
        ("/nonexistent/engine", "/nonexistent/engine"),
        ("", "engine_dir: expected an engine directory"),
    ],
)
def test_configure_fails_cleanly_on_a_missing_engine(graph, engine, reason, capfd):
    node = detector(graph, engine)
    client = Client(graph)
    graph.spin_for(3.0)  # autostart's configure runs once the executor spins; slow under load
    assert client.state() == "unconfigured" and node.detector is None
    log = capfd.readouterr().err
    errors = [line for line in log.splitlines() if "configure failed" in line]
    assert len(errors) == 1 and reason in errors[0], log
    assert "Traceback" not in log
    graph.spin_for(1.0)  # no retry loop: still one line
    assert capfd.readouterr().err.count("configure failed") == 0


def test_an_invalid_engine_fails_configure_naming_the_manifest(graph, tmp_path, constant_engine, capfd):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    node = detector(graph, broken)
    graph.spin_for(1.0)
    assert node.detector is None
    [error] = [line for line in capfd.readouterr().err.splitlines() if "configure failed" in line]
    assert str(broken / "manifest.json") in error


def test_a_bad_parameter_at_start_fails_configure_naming_it(graph, constant_engine, capfd):
    node = detector(graph, constant_engine, class_id="label")
    graph.spin_for(1.0)
    assert node.detector is None
    [error] = [line for line in capfd.readouterr().err.splitlines() if "configure failed" in line]
    assert "class_id: expected one of index, name, got 'label'" in error


@pytest.mark.parametrize(
    "parameters, reason",
    [
        ({"device": "cuda:0"}, "option device='cuda:0' is not supported; it runs on cpu"),
        ({"backend_options": ["fp16=true"]}, "unknown extra option 'fp16'"),
        ({"backend_options": ["fp16"]}, "parameter backend_options: expected KEY=VALUE"),
    ],
)
def test_backend_parameters_the_backend_refuses_fail_configure_in_one_line(
    graph, constant_engine, capfd, parameters, reason
):
    node = detector(graph, constant_engine, **parameters)
    graph.spin_for(1.0)
    assert node.detector is None
    [error] = [line for line in capfd.readouterr().err.splitlines() if "configure failed" in line]
    assert reason in error


def test_an_image_topic_that_never_publishes_is_reported_once(graph, constant_engine, capfd, monkeypatch):
    monkeypatch.setattr("leaneye.ros.detector_node.NO_IMAGE_WARNING_S", 1.0)
    node = detector(graph, constant_engine, input_type="image", image_topic="/silent_camera")
    graph.spin_for(3.5)
    warnings = [line for line in capfd.readouterr().err.splitlines() if "no image on" in line]
    assert len(warnings) == 1 and "/silent_camera" in warnings[0]
    assert node._subscription is not None  # still waiting
