"""The simulated camera and the detector and sim launch files on a real ROS 2 graph.

The camera runs in-process (conftest.graph) where its messages are checked field by field against
the scenes rendered here; the launch files run as on a vehicle: through launch's LaunchService, the
`ros2 launch` and `ros2 run` commands in processes of their own, talking to the test's node over
loopback DDS. config/detector.yaml is checked against leaneye/parameters.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import builtin_rows, write_builtin_engine

from leaneye import msgs
from leaneye.parameters import DETECTOR_PARAMETERS
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye.scenes.dataset import (
    GROUND_TRUTH_TOPIC,
    IGNORE_TOPIC,
    IMAGE_TOPIC,
    LABEL_INFO_TOPIC,
    ground_truth_messages,
)
from leaneye.scenes.render import SceneSequence

from .conftest import ros_env

rclpy = pytest.importorskip("rclpy")
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.exceptions import ParameterException  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from launch import LaunchService  # noqa: E402
from leaneye.ros.detector_node import DetectorNode  # noqa: E402
from leaneye.ros.sim_camera_node import SimCameraNode  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DETECTOR_YAML = REPO / "ros2_ws" / "src" / "leaneye" / "config" / "detector.yaml"
DETECTIONS_TOPIC = "/leaneye/detections"
# The default model's input is 192x640: scenes of about that size cost it no resizing and the graph
# little bandwidth, and it still finds the cars and people in them.
SIZE = {"width": 640, "height": 194}
STOP_TIMEOUT_S = 15


def sim_camera(graph, **params) -> SimCameraNode:
    overrides = [Parameter(name, value=value) for name, value in params.items()]
    return graph.add(SimCameraNode(parameter_overrides=overrides, context=graph.context))


class Listener:
    """The test's node: keeps every message of the topics it is given, by topic."""

    def __init__(self, graph, name: str = "listener"):
        self.graph = graph
        self.node = graph.node(name)
        self.received: dict[str, list] = {}

    def listen(self, msg_type, topic: str, qos: QoSProfile | None = None) -> list:
        """Every message on `topic` (default QoS: reliable, depth 100), in arrival order."""
        messages = self.received.setdefault(topic, [])
        self.node.create_subscription(msg_type, topic, messages.append, qos or reliable())
        return messages

    def wait(self, topic: str, count: int, timeout: float = 30.0) -> list:
        messages = self.received[topic]
        assert self.graph.spin_until(lambda: len(messages) >= count, timeout), (
            f"{len(messages)} of {count} messages arrived on {topic}"
        )
        return messages

    def until(self, condition, what: str, timeout: float = 30.0) -> None:
        assert self.graph.spin_until(condition, timeout), f"no {what} after {timeout:g} s"

    def call(self, service_type, name: str, request, timeout: float = 20.0):
        client = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"{name} not offered"
        future = client.call_async(request)
        assert self.graph.spin_until(future.done, timeout), f"{name} did not answer"
        return future.result()

    def state(self, node: str) -> str:
        """The lifecycle state of `node`, by its get_state service."""
        return self.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label


def stamps(messages: list) -> list[int]:
    return [msgs.stamp_to_ns(message.header.stamp) for message in messages]


def reliable(depth: int = 100) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


# --- the camera in-process ---------------------------------------------------------------------


def test_frames_with_clock_ground_truth_and_late_label_info(graph):
    """publish_clock: /clock, images and ground truth share stamps 1/rate apart; the pixels and boxes
    are the scene sequence's; a use_sim_time node's clock follows; LabelInfo reaches a late subscriber."""
    frames, rate, seed = 6, 20.0, 5
    listener = Listener(graph)
    sim_time_node = graph.node("sim_time_node", parameter_overrides=[Parameter("use_sim_time", value=True)])
    images = listener.listen(Image, IMAGE_TOPIC)
    truth = listener.listen(Detection2DArray, GROUND_TRUTH_TOPIC)
    ignored = listener.listen(Detection2DArray, IGNORE_TOPIC)
    clock = listener.listen(Clock, "/clock")
    camera = sim_camera(
        graph,
        seed=seed,
        rate=rate,
        frames=frames,
        frame_id="cam_front",
        publish_clock=True,
        qos_reliability="reliable",
        wait_for_subscriber=True,
        **SIZE,
    )
    listener.wait(IMAGE_TOPIC, frames)
    listener.wait(IGNORE_TOPIC, frames)
    assert camera.done and camera.published == frames

    image_stamps = stamps(images)
    assert np.diff(image_stamps).tolist() == [int(1e9 / rate)] * (frames - 1)
    assert [msgs.stamp_to_ns(m.clock) for m in clock] == image_stamps
    assert stamps(truth) == stamps(ignored) == image_stamps
    assert graph.spin_until(lambda: sim_time_node.get_clock().now().nanoseconds == image_stamps[-1], 10), (
        f"the use_sim_time node's clock is at {sim_time_node.get_clock().now().nanoseconds}, "
        f"not the last frame's {image_stamps[-1]}"
    )

    expected = SceneSequence(seed, (SIZE["width"], SIZE["height"]), rate)
    for image, got_truth, got_ignored in zip(images, truth, ignored):
        frame = expected.frame()
        assert (image.width, image.height, image.encoding, image.step) == (640, 194, "bgr8", 640 * 3)
        assert image.header.frame_id == got_truth.header.frame_id == got_ignored.header.frame_id == "cam_front"
        np.testing.assert_array_equal(msgs.image_from_msg(image), frame.image)
        _, want_truth, want_ignored = ground_truth_messages(frame, "cam_front", msgs.GeneratedTypes())
        for got, want in ((got_truth, want_truth), (got_ignored, want_ignored)):
            got_boxes, _, got_classes, got_ids = msgs.boxes_from_detection_array(got)
            want_boxes, _, want_classes, want_ids = msgs.boxes_from_detection_array(want)
            assert (got_classes, got_ids) == (want_classes, want_ids)
            np.testing.assert_array_equal(got_boxes, want_boxes)
    assert sum(len(m.detections) for m in truth) > 0, "no labelled object in any frame: nothing was compared"

    late = Listener(graph, "late_listener")
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    label_info = late.listen(LabelInfo, LABEL_INFO_TOPIC, latched)
    late.wait(LABEL_INFO_TOPIC, 1)
    assert msgs.class_names_from_label_info(label_info[0]) == dict(enumerate(SCENE_CLASSES))
    assert stamps(label_info) == image_stamps[:1]


def test_default_qos_compressed_output_and_node_clock_stamps(graph):
    """Defaults: the sensor-data profile (best effort), stamps from the node's clock; publish_compressed
    adds jpeg frames that decode to the raw frames of the same stamp."""
    listener = Listener(graph)
    raw = listener.listen(Image, IMAGE_TOPIC, qos_profile_sensor_data)
    compressed = listener.listen(CompressedImage, IMAGE_TOPIC + "/compressed", qos_profile_sensor_data)
    started_ns = listener.node.get_clock().now().nanoseconds
    camera = sim_camera(graph, rate=20.0, publish_compressed=True, **SIZE)
    listener.wait(IMAGE_TOPIC + "/compressed", 4)
    listener.wait(IMAGE_TOPIC, 4)
    now_ns = listener.node.get_clock().now().nanoseconds

    (info,) = listener.node.get_publishers_info_by_topic(IMAGE_TOPIC)
    assert info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert not camera.done  # frames 0: endless
    raw_by_stamp = dict(zip(stamps(raw), raw))
    assert all(started_ns < stamp < now_ns for stamp in raw_by_stamp)
    assert np.all(np.diff(stamps(raw)) > 0)
    for message in compressed:
        assert message.format == "jpeg" and message.header.frame_id == "camera"
        decoded = msgs.image_from_compressed_msg(message)
        original = msgs.image_from_msg(raw_by_stamp[msgs.stamp_to_ns(message.header.stamp)])
        assert decoded.shape == original.shape == (194, 640, 3)
        assert np.abs(decoded.astype(int) - original).mean() < 8  # jpeg quality 90


def test_under_use_sim_time_frames_wait_for_clock_and_carry_it(graph):
    listener = Listener(graph)
    images = listener.listen(Image, IMAGE_TOPIC, qos_profile_sensor_data)
    clock = listener.node.create_publisher(Clock, "/clock", reliable(10))
    sim_camera(graph, rate=20.0, use_sim_time=True, **SIZE)
    graph.spin_for(1.0)
    assert images == [], "a frame went out before any /clock"
    sim_ns = 1_700_000_000_123_456_789
    clock.publish(msgs.clock_msg(sim_ns, msgs.GeneratedTypes()))
    listener.wait(IMAGE_TOPIC, 2)
    assert set(stamps(images)) == {sim_ns}  # simulated time stands still until the next /clock


def test_bad_parameters_are_refused_naming_the_parameter(graph, tmp_path):
    with pytest.raises(ParameterException, match="rate out of range"):  # the descriptor's range, checked by rclpy
        sim_camera(graph, rate=0.0)
    camera = sim_camera(graph, qos_reliability="lossy")
    assert camera.problem == "qos_reliability: expected one of best_effort, reliable, got 'lossy'"
    assert camera.run() == 1
    command = ["ros2", "run", "leaneye", "sim_camera_node", "--ros-args", "-p", "qos_reliability:=lossy"]
    with started(command, tmp_path / "camera.log") as process:
        returncode = process.wait(timeout=30)
    output = (tmp_path / "camera.log").read_text().splitlines()
    lines = [line for line in output if line.strip() and not line.startswith("[ros2run]")]  # the node's own
    assert returncode == 1
    assert len(lines) == 1 and "parameter qos_reliability: expected one of best_effort, reliable" in lines[0], lines


# --- the parameters file -----------------------------------------------------------------------


def test_detector_yaml_holds_every_default_of_parameters_py_and_loads_in_rcl(graph):
    document = yaml.safe_load(DETECTOR_YAML.read_text())
    assert list(document) == ["/**"]
    values = document["/**"]["ros__parameters"]
    # An empty list cannot be written in a ROS 2 parameters file (its type is unknown): left out, as its comment says.
    defaults = {spec.name: spec.default for spec in DETECTOR_PARAMETERS if spec.default != ()}
    assert values == defaults
    assert all(type(values[name]) is type(default) for name, default in defaults.items())
    left_out = {spec.name for spec in DETECTOR_PARAMETERS} - set(values)
    assert left_out == {"classes", "backend_options"}
    assert all(f"# {name}: [" in DETECTOR_YAML.read_text() for name in left_out)

    node = DetectorNode(
        context=graph.context,
        cli_args=["--ros-args", "--params-file", str(DETECTOR_YAML), "-p", "conf_threshold:=0.5"],
    )
    try:  # never spun, so it does not try to start with the file's empty engine_dir
        loaded = {name: node.get_parameter(name).value for name in defaults}
    finally:
        node.destroy_node()
    assert loaded == {**defaults, "conf_threshold": 0.5}


# --- launch files and processes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def constant_engine(tmp_path_factory) -> Path:
    """Finds one car in every frame, at once: where what is detected does not matter."""
    return write_builtin_engine(
        tmp_path_factory.mktemp("engine") / "engine", builtin_rows([([20, 20, 60, 60], 0, 0.9)])
    )


@contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """`command` in a process group of its own, output to `log`; stopped (`stop`) at the end or on a failure."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=ros_env(), stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> int:
    """Ctrl-C, then SIGKILL to the group after STOP_TIMEOUT_S. `ros2 run` expects its node to get the
    SIGINT too, as in a terminal; `ros2 launch` without a terminal passes it on to its processes itself
    (non-interactive), so it alone gets it: a second one would interrupt the nodes' own shutdown."""
    if process.poll() is None:
        if process.args[1] == "launch":
            process.send_signal(signal.SIGINT)
        else:
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@contextmanager
def spinning(graph) -> Iterator[None]:
    """The graph's executor on a thread of its own, while the test's thread runs a LaunchService."""
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            graph.executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def answered(detections: list, truth: list) -> list:
    """The detections of the frames since the first ground truth the listener got. A process started
    beside running ones is sometimes discovered only at the next DDS announcement, seconds later (seen
    here with loopback discovery), so the ground truth of the first frames may never reach the listener."""
    if not truth:
        return []
    # Up to the last ground truth received: under load a reliable ground truth message can still be
    # on its way when the detections of the same frame (another publisher) have arrived.
    first, last = msgs.stamp_to_ns(truth[0].header.stamp), msgs.stamp_to_ns(truth[-1].header.stamp)
    return [message for message in detections if first <= msgs.stamp_to_ns(message.header.stamp) <= last]


def assert_answers(detections: list, truth: list, at_least: int) -> list:
    """Every detection answers a frame the camera sent (same stamp, frame_id), once; most find something."""
    answers = answered(detections, truth)
    assert len(answers) >= at_least, (
        f"{len(answers)} of {len(detections)} Detection2DArray answer frames whose ground truth arrived"
    )
    unknown = sorted(set(stamps(answers)) - set(stamps(truth)))
    assert not unknown, (
        f"Detection2DArray stamps {unknown} are not among the {len(truth)} ground truth stamps, "
        f"{stamps(truth)[0]} to {stamps(truth)[-1]}; gaps of the ground truth: "
        f"{[(a, b) for a, b in zip(stamps(truth), stamps(truth)[1:]) if b - a > 60_000_000]}"
    )
    assert len(set(stamps(answers))) == len(answers), "a frame answered twice"
    assert all(message.header.frame_id == "camera" for message in answers)
    found = sum(bool(message.detections) for message in answers)
    assert found >= 0.8 * len(answers), f"objects found in only {found} of {len(answers)} frames"
    return answers


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["sim.launch.py", "engine:=unused", "rate:=fast"], "rate: expected a number, got 'fast'"),
        (["detector.launch.py", "autostart:=maybe"], "autostart: expected true or false, got 'maybe'"),
        (
            ["detector.launch.py", "params_file:=/nonexistent.yaml"],
            "params_file: /nonexistent.yaml is not a file (expected the detector's parameters YAML)",
        ),
    ],
)
def test_a_bad_launch_argument_ends_the_launch_with_one_line_naming_it(arguments, message, tmp_path):
    log = tmp_path / "launch.log"
    with started(["ros2", "launch", "leaneye", *arguments], log) as launch:
        returncode = launch.wait(timeout=30)
    errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
    assert returncode == 1 and len(errors) == 1 and errors[0].endswith(message), log.read_text()
    assert "process started" not in log.read_text()  # nothing was started


def test_sim_launch_through_launch_service_detects_on_generated_scenes(graph, scene_engine):
    frames, rate = 60, 10.0
    listener = Listener(graph)
    detections = listener.listen(Detection2DArray, DETECTIONS_TOPIC)
    truth = listener.listen(Detection2DArray, GROUND_TRUTH_TOPIC)
    clock = listener.listen(Clock, "/clock")
    service = LaunchService()
    launch_file = Path(get_package_share_directory("leaneye")) / "launch" / "sim.launch.py"
    arguments = {"engine": scene_engine, "frames": frames, "rate": rate, "publish_clock": "true", "seed": 3, **SIZE}
    service.include_launch_description(
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(launch_file)),
            launch_arguments=[(name, str(value)) for name, value in arguments.items()],
        )
    )
    watchdog = threading.Timer(90, service.shutdown)  # in case the launch never ends by itself
    watchdog.start()
    try:
        with spinning(graph):
            returncode = service.run()  # ends when the camera has sent its frames and exited
    finally:
        watchdog.cancel()
    assert returncode == 0
    graph.spin_for(0.5)  # anything still in flight
    # Simulated time: frames 1/rate apart and a /clock per frame carrying its stamp (compared from the
    # first of both the listener got: its two subscriptions may be matched a moment apart).
    assert truth and clock, f"{len(truth)} ground truth and {len(clock)} /clock messages arrived"
    assert np.diff(stamps(truth)).tolist() == [int(1e9 / rate)] * (len(truth) - 1)
    clock_stamps = [msgs.stamp_to_ns(message.clock) for message in clock]
    first = max(stamps(truth)[:1] + clock_stamps[:1])
    assert [stamp for stamp in clock_stamps if stamp >= first] == [stamp for stamp in stamps(truth) if stamp >= first]
    answers = assert_answers(detections, truth, at_least=10)
    # The detector drops frames when the camera outpaces it (the mailbox): a loaded CI machine answers fewer.
    assert len(answers) >= len(truth) // 4, f"only {len(answers)} of {len(truth)} frames were answered"


def test_ros2_launch_sim_with_compressed_frames_until_ctrl_c(graph, scene_engine, tmp_path):
    listener = Listener(graph)
    detections = listener.listen(Detection2DArray, DETECTIONS_TOPIC)
    truth = listener.listen(Detection2DArray, GROUND_TRUTH_TOPIC)
    command = ["ros2", "launch", "leaneye", "sim.launch.py", f"engine:={scene_engine}", "compressed:=true"]
    command += [f"{name}:={value}" for name, value in SIZE.items()]
    log = tmp_path / "launch.log"
    with started(command, log) as launch:
        listener.until(lambda: len(answered(detections, truth)) >= 10, "10 answered frames", timeout=60)
        graph.spin_for(0.5)  # what is still in flight, such as the last frames' ground truth
        returncode = stop(launch)
    output = log.read_text()
    assert returncode == 0, output
    assert "subscribed to /camera/image_raw/compressed" in output, output
    assert "process has died" not in output and output.count("process has finished cleanly") == 2, output
    assert_answers(detections, truth, at_least=10)


def test_camera_and_detector_in_two_processes_over_dds(graph, constant_engine, tmp_path):
    listener = Listener(graph)
    detections = listener.listen(Detection2DArray, DETECTIONS_TOPIC)
    truth = listener.listen(Detection2DArray, GROUND_TRUTH_TOPIC)
    camera = ["ros2", "run", "leaneye", "sim_camera_node", "--ros-args", "-p", "rate:=20.0"]
    camera += [arg for name, value in SIZE.items() for arg in ("-p", f"{name}:={value}")]
    detector = ["ros2", "run", "leaneye", "detector_node", "--ros-args", "-p", f"engine_dir:={constant_engine}"]
    with started(camera, tmp_path / "camera.log"), started(detector, tmp_path / "detector.log"):
        listener.until(lambda: len(answered(detections, truth)) >= 5, "5 answered frames", timeout=60)
        graph.spin_for(0.5)
    answers = assert_answers(detections, truth, at_least=5)
    assert all(msgs.boxes_from_detection_array(m)[2] == ["0"] for m in answers)  # the constant engine's car


def test_detector_launch_with_autostart_false_waits_for_configure_and_activate(graph, constant_engine, tmp_path):
    listener = Listener(graph)
    topic = "/vehicle" + DETECTIONS_TOPIC
    detections = listener.listen(Detection2DArray, topic)
    truth = listener.listen(Detection2DArray, GROUND_TRUTH_TOPIC)
    command = ["ros2", "launch", "leaneye", "detector.launch.py", f"engine:={constant_engine}", "autostart:=false"]
    command += ["namespace:=vehicle", "device:=cpu"]
    with started(command, tmp_path / "launch.log"):
        assert listener.state("/vehicle/leaneye") == "unconfigured"
        sim_camera(graph, rate=20.0, **SIZE)
        listener.wait(GROUND_TRUTH_TOPIC, 10)
        # Found by its services, so discovered: unconfigured, it has no publishers yet, and sent nothing.
        assert listener.node.count_publishers(topic) == 0 and detections == []
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            request = ChangeState.Request(transition=Transition(id=transition))
            assert listener.call(ChangeState, "/vehicle/leaneye/change_state", request).success
        assert listener.state("/vehicle/leaneye") == "active"
        listener.wait(topic, 5)
        graph.spin_for(0.5)
    assert_answers(detections, truth, at_least=5)


def test_the_dockerfile_command_passes_arguments_the_launch_file_declares():
    """The image's CMD (`ros2 launch leaneye detector.launch.py engine:=/engine`) against what the
    installed launch file declares, as `ros2 launch --show-args` lists it."""
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    [cmd] = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    words = json.loads(cmd[len("CMD ") :])
    shown = subprocess.run(
        [*words[:4], "--show-args"], env=ros_env(), capture_output=True, text=True, timeout=60, check=True
    ).stdout
    declared = set(re.findall(r"^    '([a-z_]+)':$", shown, flags=re.M))
    assert {"engine", "image_topic", "autostart", "use_sim_time"} <= declared, shown
    passed = {word.split(":=")[0] for word in words[4:]}
    assert passed and passed <= declared, (passed, declared)
