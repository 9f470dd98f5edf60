"""`leaneye bench ros`, its ROS 2 half (the command is leaneye/cli/bench.py; docs/ros-bench.md).

Per frame, the time from an image's publish to the arrival of its detections, next to
`Detector.detect` alone on the same frame, the two interleaved in one run:

    inprocess   the detector node, the image publisher and the detections subscriber in one
                process and one executor; the node's own Detector is timed alone
    processes   the detector node in a second process (`python -m leaneye.ros.bench detector`)
    transport   no detector: a second process (`python -m leaneye.ros.bench echo`) answers each
                image with the time it arrived, reliable then best effort

Frames go out no faster than the rate asked, each once the previous one's answer is back, so a
figure is one frame's latency, never a queue's. Times across processes are CLOCK_MONOTONIC
(time.monotonic_ns), which all processes of one machine share.

Fast DDS reads its XML profile once per process, and glibc its malloc settings, so `run_bench`
measures each setting (Fast DDS's defaults, the profile, the profile with KEEP_MEMORY_ENV) in a
session process of its own (`python -m leaneye.ros.bench session`), whose peers inherit its
environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from leaneye_msgs.msg import FrameLatency
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import LoggingSeverity
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, TimeReference
from vision_msgs.msg import Detection2DArray

from .. import msgs
from ..backends import format_extra_options
from ..bench import FrameCycle
from ..detector import Detector
from ..errors import LeanEyeError, first_line
from ..latency import PERCENTILES
from . import detector_node
from .node_support import spin_until_shutdown

RELIABILITIES = ("reliable", "best_effort")
IMAGE_TOPIC = "/leaneye_bench/image_raw"
ECHO_TOPIC = "/leaneye_bench/image_received"
PROFILE_FILE = "fastdds_large_images.xml"
# rmw_fastrtps (Fast DDS 2.x) reads the first, Fast DDS 3 the second.
PROFILE_ENV = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
# glibc gives a freed block of more than its mmap threshold (128 KiB, rising to the largest block
# freed so far) straight back to the system, and trims the heap's top above twice that: each
# 1.36 MB image buffer (Fast DDS's payload, the C message, the Python array) then comes back as
# fresh pages, some 330 page faults per buffer and frame. These keep buffers below 32 MiB in the
# heap and the heap's free top below 128 MiB mapped.
KEEP_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"}
FASTDDS_PROFILES_TAG = "{http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles}"
WARMUP_FRAMES = 3  # sent and answered but not timed: allocations, the last of discovery, first inferences
REPLY_TIMEOUT_S = 10.0  # a frame whose answer takes longer counts as lost
LOST_AFTER_S = 0.25  # the same for best effort, which loses frames for good
PEER_START_TIMEOUT_S = 60.0  # rclpy's import and an engine's check take seconds on a loaded machine
# The longest a wait sleeps before looking at its deadline and the peer: an answer wakes it at
# once, and a shorter sleep would run the executor's Python, and take the GIL, during inference.
_SPIN_S = 0.1
_TYPES = msgs.GeneratedTypes()
_NS_PER_MS = 1e6


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What `leaneye bench ros` measures; plain data, handed to each session process as JSON."""

    engine: str | None  # needed by the inprocess and processes modes
    sources: list[str]
    topic: str
    frames: int
    runs: int
    rate_hz: float
    modes: tuple[str, ...]
    conf: float = 0.25
    iou: float = 0.45
    threads: int = 0
    device: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # BackendOptions.extra


# --- the profile -------------------------------------------------------------------------------


def shipped_profile() -> Path | None:
    """The Fast DDS profile for large images: installed in share/leaneye/config, or beside the sources."""
    with contextlib.suppress(ImportError, LookupError):
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("leaneye")) / "config" / PROFILE_FILE
        if installed.is_file():
            return installed
    source = Path(__file__).resolve().parents[2] / "config" / PROFILE_FILE
    return source if source.is_file() else None


def check_profile(path: Path) -> None:
    """A readable Fast DDS XML profiles document. Fast DDS itself only logs a bad file and carries on
    with its defaults, which would make a measurement "with the profile" silently one without."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LeanEyeError(f"{path}: not well-formed XML ({exc})") from None
    if root.tag not in (f"{FASTDDS_PROFILES_TAG}profiles", f"{FASTDDS_PROFILES_TAG}dds"):
        raise LeanEyeError(
            f"{path}: expected a Fast DDS profiles document (<profiles> or <dds> in {FASTDDS_PROFILES_TAG[1:-1]}), "
            f"got <{root.tag}>"
        )


def profile_env(profile: Path | None, keep_memory: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ROS 2 process that uses `profile` (None: Fast DDS's defaults) and, with
    `keep_memory`, KEEP_MEMORY_ENV; the working directory's DEFAULT_FASTRTPS_PROFILES.xml is
    ignored either way."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in (*PROFILE_ENV, *KEEP_MEMORY_ENV)}
    env["SKIP_DEFAULT_XML_FILE"] = "1"
    if profile is not None:
        env.update(dict.fromkeys(PROFILE_ENV, str(Path(profile).absolute())))
    if keep_memory:
        env.update(KEEP_MEMORY_ENV)
    return env


# --- the parent: one session process per setting -----------------------------------------------


def run_bench(config: BenchConfig, profile: Path | None) -> dict:
    """Measure `config` with Fast DDS's defaults, then with `profile` (when given) alone and with
    KEEP_MEMORY_ENV added (without a profile: with KEEP_MEMORY_ENV alone). The profile changes
    nothing within one process (Fast DDS delivers there without a transport), so the in-process
    figures are measured once per KEEP_MEMORY_ENV setting."""
    if profile is not None:
        check_profile(profile)
        profile = Path(profile).absolute()
    settings = [(None, False)] + ([(profile, False), (profile, True)] if profile is not None else [(None, True)])
    sessions = []
    measured_inprocess: set[bool] = set()
    for setting_profile, keep_memory in settings:
        modes = tuple(m for m in config.modes if m != "inprocess" or keep_memory not in measured_inprocess)
        if "inprocess" in modes:
            measured_inprocess.add(keep_memory)
        if modes:
            setting = f"{'default transports' if setting_profile is None else setting_profile.name}"
            print(
                f"bench ros: {', '.join(modes)} with {setting}{' + malloc env' if keep_memory else ''}", file=sys.stderr
            )
            session = _run_session_process(dataclasses.replace(config, modes=modes), setting_profile, keep_memory)
            sessions.append(session)
    return {
        "config": dataclasses.asdict(config),
        "warmup_frames": WARMUP_FRAMES,
        "keep_memory_env": KEEP_MEMORY_ENV,
        "sessions": sessions,
    }


def _run_session_process(config: BenchConfig, profile: Path | None, keep_memory: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="leaneye_bench_") as folder:
        out = Path(folder) / "session.json"
        command = [sys.executable, "-m", __spec__.name, "session", json.dumps(dataclasses.asdict(config)), str(out)]
        code = subprocess.run(command, env=profile_env(profile, keep_memory), check=False).returncode
        result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    if "error" in result:
        raise LeanEyeError(result["error"])
    if code != 0 or "modes" not in result:
        raise LeanEyeError(f"the measuring process ({' '.join(command[:4])}) exited with {code} and no result")
    result["profile"] = str(profile) if profile is not None else None
    result["keep_memory"] = keep_memory
    return result


# --- one session -------------------------------------------------------------------------------


def run_session(config: BenchConfig) -> dict:
    """Every mode of `config`, in this process and its environment (its Fast DDS profile)."""
    result: dict[str, Any] = {"load": list(os.getloadavg()), "modes": {}}
    with contextlib.ExitStack() as stack:
        frames = FrameCycle([Path(s) for s in config.sources], config.topic, config.frames, stack)
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leaneye_bench_peers_")))
        for mode in config.modes:
            if mode == "inprocess":
                result["modes"][mode] = _measure_inprocess(config, frames)
            elif mode == "processes":
                result["modes"][mode] = _measure_processes(config, frames, log_dir)
            else:
                result["modes"][mode] = {r: _measure_transport(config, frames, r, log_dir) for r in RELIABILITIES}
        result["frames_described"] = frames.described
    return result


class Client:
    """The benchmark's own node: publishes the images and notes when each one's answers arrive."""

    def __init__(self, context, reliability: str, answers: dict[str, tuple[type, str]]):
        # No parameter services: entities an executor must look at on every wake-up, which the
        # measured path would pay for and a camera or consumer of detections need not have.
        self.node = rclpy.create_node("leaneye_bench", context=context, start_parameter_services=False)
        qos = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        )
        self.images = self.node.create_publisher(Image, IMAGE_TOPIC, qos)
        self.received: dict[str, dict[int, tuple[int, Any]]] = {name: {} for name in answers}
        self.answers = [
            self.node.create_subscription(msg_class, topic, self._receiver(name), QoSProfile(depth=10))
            for name, (msg_class, topic) in answers.items()
        ]

    def _receiver(self, name: str) -> Callable[[Any], None]:
        received = self.received[name]

        def on_answer(msg: Any) -> None:
            received[msgs.stamp_to_ns(msg.header.stamp)] = (time.monotonic_ns(), msg)

        return on_answer

    def connected(self) -> bool:
        return self.images.get_subscription_count() > 0 and all(s.get_publisher_count() > 0 for s in self.answers)

    def answered(self, stamp_ns: int) -> bool:
        return all(stamp_ns in received for received in self.received.values())


def _spin_until(executor, condition: Callable[[], bool], deadline: float, peer: Peer | None = None) -> bool:
    while not condition():
        if time.monotonic() >= deadline:
            return False
        if peer is not None:
            peer.check()
        executor.spin_once(timeout_sec=min(_SPIN_S, max(0.0, deadline - time.monotonic())))
    return True


def _exchange(
    executor,
    client: Client,
    frames: FrameCycle,
    config: BenchConfig,
    timeout_s: float,
    alone: Callable[[np.ndarray], None] | None,
    peer: Peer | None,
) -> list[dict]:
    """Send WARMUP_FRAMES + config.runs frames, one at a time, paced at config.rate_hz; per timed
    frame: when it was published, its answers (None when lost) and, with `alone`, how long
    `alone(image)` took on it, run before the publish on odd frames and after it on even ones."""
    period_s = 1.0 / config.rate_hz
    next_send = time.monotonic()
    records = []
    for index in range(WARMUP_FRAMES + config.runs):
        image = next(frames).image
        msg = msgs.image_msg(image, time.time_ns(), "camera", types=_TYPES)
        stamp_ns = msgs.stamp_to_ns(msg.header.stamp)
        _spin_until(executor, lambda: False, next_send, peer)  # serve late answers while waiting
        alone_ms = None
        if alone is not None and index % 2:
            alone_ms = _timed_ms(alone, image)
        sent_ns = time.monotonic_ns()
        client.images.publish(msg)
        publish_ms = (time.monotonic_ns() - sent_ns) / _NS_PER_MS
        next_send = max(next_send + period_s, time.monotonic())
        _spin_until(executor, functools.partial(client.answered, stamp_ns), time.monotonic() + timeout_s, peer)
        if alone is not None and alone_ms is None:
            alone_ms = _timed_ms(alone, image)
        if index >= WARMUP_FRAMES:
            answers = {name: received.pop(stamp_ns, None) for name, received in client.received.items()}
            records.append(
                {
                    "sent_ns": sent_ns,
                    "publish_ms": publish_ms,
                    "answers": answers,
                    "alone_ms": alone_ms,
                    "size": image.shape[1::-1],
                }
            )
        for received in client.received.values():
            received.clear()
    return records


def _timed_ms(function: Callable[[np.ndarray], Any], image: np.ndarray) -> float:
    started = time.perf_counter()
    function(image)
    return (time.perf_counter() - started) * 1e3


def _detector_answers() -> dict[str, tuple[type, str]]:
    node = f"/{detector_node.NODE_NAME}"
    return {"detections": (Detection2DArray, f"{node}/detections"), "latency": (FrameLatency, f"{node}/latency")}


def _detector_parameters(config: BenchConfig) -> dict[str, Any]:
    # device and backend_options only when given: an empty list has no parameter type to infer.
    backend = {"device": config.device} if config.device else {}
    if config.extra:
        backend["backend_options"] = format_extra_options(config.extra)
    return backend | {
        "engine_dir": str(config.engine),
        "image_topic": IMAGE_TOPIC,
        "input_type": "image",
        "qos_reliability": "reliable",
        "conf_threshold": float(config.conf),
        "iou_threshold": float(config.iou),
        "num_threads": int(config.threads),
        "publish_debug_image": False,
    }


def _detection_figures(records: list[dict], config: BenchConfig) -> dict:
    """Percentiles of publish -> detections received, of Detector.detect alone, of the paired
    per-frame difference and of the node's own receipt -> publish."""
    delivered = [r for r in records if all(r["answers"].values())]
    path = [(r["answers"]["detections"][0] - r["sent_ns"]) / _NS_PER_MS for r in delivered]
    alone = [r["alone_ms"] for r in delivered]
    in_node = [r["answers"]["latency"][1].receipt_to_publish_ms for r in delivered]
    figures = {"frames": len(records), "delivered": len(delivered), "rate_hz": config.rate_hz}
    if delivered:
        figures |= {
            "path_ms": percentiles(path),
            "alone_ms": percentiles(alone),
            "added_ms": percentiles(np.subtract(path, alone)),
            "outside_node_ms": percentiles(np.subtract(path, in_node)),
        }
        figures["ratio"] = figures["path_ms"]["p50"] / figures["alone_ms"]["p50"]
    figures["frame_sizes"] = sorted({tuple(r["size"]) for r in records})
    return figures


def percentiles(values) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}


def _measure_inprocess(config: BenchConfig, frames: FrameCycle) -> dict:
    with _context() as context:
        overrides = [Parameter(name, value=value) for name, value in _detector_parameters(config).items()]
        node = detector_node.DetectorNode(parameter_overrides=overrides, context=context)
        node.get_logger().set_level(LoggingSeverity.WARN)  # its configure/subscribe lines would cut into the table
        client = Client(context, "reliable", _detector_answers())
        executor = SingleThreadedExecutor(context=context)
        try:
            for each in (node, client.node):
                executor.add_node(each)
            deadline = time.monotonic() + PEER_START_TIMEOUT_S
            if not _spin_until(executor, lambda: node.detector is not None and client.connected(), deadline):
                raise LeanEyeError(f"{config.engine}: the in-process detector node did not start (see its log above)")
            records = _exchange(executor, client, frames, config, REPLY_TIMEOUT_S, node.detector.detect, None)
            figures = _detection_figures(records, config)
            figures["engine_input"] = list(node.detector.manifest.input.size[::-1])
        finally:
            executor.shutdown()
            node.destroy_node()
            client.node.destroy_node()
    return figures


def _measure_processes(config: BenchConfig, frames: FrameCycle, log_dir: Path) -> dict:
    ros_args = [item for name, value in _detector_parameters(config).items() for item in ("-p", f"{name}:={value}")]
    with contextlib.ExitStack() as stack:
        detector = stack.enter_context(
            Detector.from_engine(
                config.engine,
                conf=config.conf,
                iou=config.iou,
                threads=config.threads,
                device=config.device,
                extra=config.extra,
            )
        )
        context = stack.enter_context(_context())
        client = Client(context, "reliable", _detector_answers())
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(client.node)
        stack.callback(client.node.destroy_node)
        stack.callback(executor.shutdown)
        peer = stack.enter_context(Peer("detector", ["--ros-args", *ros_args], log_dir))
        peer.wait_connected(executor, client)
        records = _exchange(executor, client, frames, config, REPLY_TIMEOUT_S, detector.detect, peer)
        figures = _detection_figures(records, config)
        figures["engine_input"] = list(detector.manifest.input.size[::-1])
    return figures


def _measure_transport(config: BenchConfig, frames: FrameCycle, reliability: str, log_dir: Path) -> dict:
    timeout_s = REPLY_TIMEOUT_S if reliability == "reliable" else LOST_AFTER_S
    with contextlib.ExitStack() as stack:
        context = stack.enter_context(_context())
        client = Client(context, reliability, {"echo": (TimeReference, ECHO_TOPIC)})
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(client.node)
        stack.callback(client.node.destroy_node)
        stack.callback(executor.shutdown)
        peer = stack.enter_context(Peer("echo", ["--reliability", reliability], log_dir))
        peer.wait_connected(executor, client)
        records = _exchange(executor, client, frames, config, timeout_s, None, peer)
    delivered = [r for r in records if r["answers"]["echo"] is not None]
    one_way = [(msgs.stamp_to_ns(r["answers"]["echo"][1].time_ref) - r["sent_ns"]) / _NS_PER_MS for r in delivered]
    figures = {"frames": len(records), "delivered": len(delivered), "rate_hz": config.rate_hz}
    if delivered:
        figures["one_way_ms"] = percentiles(one_way)
    figures["publish_call_ms"] = percentiles([r["publish_ms"] for r in records])
    figures["frame_sizes"] = sorted({tuple(r["size"]) for r in records})
    return figures


@contextlib.contextmanager
def _context() -> Iterator[Any]:
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


class Peer:
    """The second process of a measurement (`python -m leaneye.ros.bench <role> ...`); its output
    goes to a log file, whose last line explains a failure."""

    def __init__(self, role: str, args: list[str], log_dir: Path):
        self.role = role
        self.log = log_dir / f"{role}.log"
        self._args = args
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Peer:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __spec__.name, self.role, *self._args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # rclpy's clean shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise LeanEyeError(f"the {self.role} process exited ({code}): {lines[-1] if lines else 'no output'}")

    def wait_connected(self, executor, client: Client) -> None:
        if not _spin_until(executor, client.connected, time.monotonic() + PEER_START_TIMEOUT_S, self):
            raise LeanEyeError(
                f"the {self.role} process did not connect within {PEER_START_TIMEOUT_S:g} s "
                f"(log: {self.log.read_text(encoding='utf-8', errors='replace').strip()[-300:]!r})"
            )


# --- the peers ---------------------------------------------------------------------------------


def echo_node(reliability: str) -> Any:
    """A node that answers each image on IMAGE_TOPIC with a sensor_msgs/TimeReference: the image's
    header and, as time_ref, CLOCK_MONOTONIC when its callback started."""
    node = rclpy.create_node("leaneye_bench_echo", start_parameter_services=False)
    answers = node.create_publisher(TimeReference, ECHO_TOPIC, QoSProfile(depth=10))

    def on_image(msg: Image) -> None:
        sec, nanosec = divmod(time.monotonic_ns(), 1_000_000_000)
        answers.publish(TimeReference(header=msg.header, time_ref=Time(sec=sec, nanosec=nanosec), source="echo"))

    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    node.create_subscription(Image, IMAGE_TOPIC, on_image, QoSProfile(depth=1, reliability=policy))
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaneye.ros.bench", description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    session = roles.add_parser("session", help="measure a BenchConfig (JSON) and write the figures to OUT")
    session.add_argument("config")
    session.add_argument("out", type=Path)
    echo_role = roles.add_parser("echo", help="answer each image with the time it arrived")
    echo_role.add_argument("--reliability", choices=RELIABILITIES, default="reliable")
    roles.add_parser("detector", help="the detector node (its parameters after --ros-args)")
    args, _ = parser.parse_known_args(argv)  # rclpy reads --ros-args from sys.argv itself
    if args.role == "detector":
        spin_until_shutdown(detector_node.DetectorNode)
    elif args.role == "echo":
        spin_until_shutdown(functools.partial(echo_node, args.reliability))
    else:
        fields = json.loads(args.config)
        config = BenchConfig(**{**fields, "modes": tuple(fields["modes"])})
        try:
            result = run_session(config)
        except LeanEyeError as exc:
            result = {"error": str(exc)}
        except Exception as exc:  # still one line for the parent to print
            result = {"error": f"bench session: {first_line(exc)}"}
        args.out.write_text(json.dumps(result), encoding="utf-8")
        return 2 if "error" in result else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
