"""`leaneye bench ros` on a real ROS 2 graph: every mode runs and reports well-formed figures, the
shipped Fast DDS profile is applied by Fast DDS and carries large images between two processes,
and bad options fail with one line. A few frames of a constant engine: no timing is asserted."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import pytest
from helpers import builtin_rows, write_builtin_engine

from leaneye.scenes.render import SceneSequence

from .conftest import ros_env

pytest.importorskip("rclpy")
from leaneye.ros import bench as ros_bench  # noqa: E402

FRAME_SIZE = (1224, 370)  # the camera's width x height: 1.36 MB in bgr8
RUNS = 3
FIGURES = r"(?P<p50>-?\d+\.\d{3})\s+(?P<p90>-?\d+\.\d{3})\s+(?P<p99>-?\d+\.\d{3})|(?P<none>\(none arrived\))"
ROW = re.compile(rf"^ {{6}}(?P<label>(?:  )?\S.*?)\s+(?:{FIGURES})(?P<rest>.*)$")


@pytest.fixture(scope="module")
def constant_engine(tmp_path_factory) -> Path:
    return write_builtin_engine(
        tmp_path_factory.mktemp("engine") / "engine", builtin_rows([([20, 20, 60, 60], 0, 0.9)])
    )


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    scenes = SceneSequence(seed=3, size=FRAME_SIZE)
    for index in range(2):
        cv2.imwrite(str(folder / f"{index:02d}.png"), scenes.frame().image)
    return folder


def bench_ros(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "leaneye.cli", "bench", "ros", *args]
    return subprocess.run(command, env=ros_env(), capture_output=True, text=True, timeout=600, check=False)


def table_rows(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            figures = None if match["none"] else [float(match[name]) for name in ("p50", "p90", "p99")]
            assert figures is None or all(math.isfinite(value) for value in figures), line
            rows.append({"label": match["label"].strip(), "figures": figures, "rest": match["rest"].split()})
    return rows


def assert_percentiles(figures: dict, positive: bool = True) -> None:
    assert figures["p50"] <= figures["p90"] <= figures["p99"]
    if positive:
        assert figures["p50"] > 0


def test_every_mode_prints_and_writes_figures_with_and_without_the_shipped_profile(
    constant_engine, frames_dir, tmp_path
):
    out = tmp_path / "bench.json"
    result = bench_ros("--engine", str(constant_engine), str(frames_dir), "--runs", str(RUNS), "--json", str(out))
    assert result.returncode == 0, result.stderr

    report = json.loads(out.read_text())
    profile = ros_bench.shipped_profile()
    settings = [(s["profile"], s["keep_memory"]) for s in report["sessions"]]
    assert settings == [(None, False), (str(profile), False), (str(profile), True)]
    # In-process figures once per malloc setting: the profile changes nothing within one process.
    assert [sorted(s["modes"]) for s in report["sessions"]] == [
        ["inprocess", "processes", "transport"],
        ["processes", "transport"],
        ["inprocess", "processes", "transport"],
    ]
    for session in report["sessions"]:
        assert session["frames_described"] == [f"{frames_dir} (2 images)"]
        for mode in ("inprocess", "processes"):
            if mode not in session["modes"]:
                continue
            figures = session["modes"][mode]
            assert figures["delivered"] == figures["frames"] == RUNS  # reliable: every frame's detections came back
            assert figures["frame_sizes"] == [list(FRAME_SIZE)]
            assert figures["engine_input"] == [320, 96]
            for name in ("path_ms", "alone_ms", "outside_node_ms"):
                assert_percentiles(figures[name])
            assert_percentiles(figures["added_ms"], positive=False)
            assert figures["ratio"] == pytest.approx(figures["path_ms"]["p50"] / figures["alone_ms"]["p50"])
        transport = session["modes"]["transport"]
        assert sorted(transport) == ["best_effort", "reliable"]
        # The profile's sessions carry the 1.36 MB images between two processes; reliable loses none.
        assert transport["reliable"]["delivered"] == transport["reliable"]["frames"] == RUNS
        assert_percentiles(transport["reliable"]["one_way_ms"])
        assert 0 <= transport["best_effort"]["delivered"] <= RUNS
        assert_percentiles(transport["reliable"]["publish_call_ms"])

    rows = table_rows(result.stdout)
    labels = [row["label"] for row in rows]
    assert labels.count("image publish -> detections received") == 5  # 2 in-process + 3 between processes
    assert labels.count("Detector.detect alone") == 5
    assert labels.count("outside the node's receipt -> publish") == 5
    assert labels.count("reliable") == labels.count("best effort") == 3
    assert labels.count("of which the publish call") == 6
    detections = [row for row in rows if row["label"] == "image publish -> detections received"]
    assert all(row["rest"][-1] == f"{RUNS}/{RUNS}" for row in detections)
    first = report["sessions"][0]["modes"]["inprocess"]
    assert detections[0]["figures"][0] == pytest.approx(first["path_ms"]["p50"], abs=5e-4)
    assert float(detections[0]["rest"][0]) == pytest.approx(first["ratio"], abs=5e-4)
    assert f"on {frames_dir} (2 images), frames 1224x370" in result.stdout
    assert "profile fastdds_large_images.xml + malloc env" in result.stdout


def test_transport_alone_needs_no_engine_and_profile_none_measures_the_defaults(frames_dir):
    result = bench_ros(str(frames_dir), "--mode", "transport", "--profile", "none", "--runs", "2")
    assert result.returncode == 0, result.stderr
    labels = [row["label"] for row in table_rows(result.stdout)]
    assert labels == ["reliable", "of which the publish call", "best effort", "of which the publish call"] * 2
    assert "image publish -> detections received" not in result.stdout
    assert "default transports + malloc env" in result.stdout
    assert "fastdds_large_images" not in result.stdout


def test_the_shipped_profile_is_installed_and_gives_shared_memory_room_for_large_images():
    profile = ros_bench.shipped_profile()
    assert profile is not None and profile.parts[-4:] == ("share", "leaneye", "config", ros_bench.PROFILE_FILE)
    ros_bench.check_profile(profile)
    ns = {"f": ros_bench.FASTDDS_PROFILES_TAG[1:-1]}
    root = ET.parse(profile).getroot()
    shm = [
        d
        for d in root.iterfind("f:transport_descriptors/f:transport_descriptor", ns)
        if d.findtext("f:type", None, ns) == "SHM"
    ]
    assert len(shm) == 1
    assert int(shm[0].findtext("f:segment_size", None, ns)) >= 4 * FRAME_SIZE[0] * FRAME_SIZE[1] * 3
    participant = root.find("f:participant[@is_default_profile='true']", ns)
    used = [t.text for t in participant.iterfind("f:rtps/f:userTransports/f:transport_id", ns)]
    assert shm[0].findtext("f:transport_id", None, ns) in used
    assert participant.findtext("f:rtps/f:useBuiltinTransports", None, ns) == "false"


def mapped_segment_sizes(pid: int) -> list[int]:
    """Sizes of the Fast DDS shared-memory segments (not its ports) a process has mapped."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        if re.fullmatch(r"/dev/shm/fastrtps_[0-9a-f]{16}", path):
            paths.add(path)
    return [Path(path).stat().st_size for path in paths if Path(path).exists()]


@pytest.mark.parametrize("with_profile", [True, False], ids=["profile", "defaults"])
def test_fast_dds_applies_the_profile_segment_size(with_profile):
    """Fast DDS only logs a profile it cannot use and carries on with its defaults: the segment a
    process maps is the proof that this one took effect (and, without it, that the defaults differ)."""
    profile = ros_bench.shipped_profile()
    ns = {"f": ros_bench.FASTDDS_PROFILES_TAG[1:-1]}
    segment_size = int(ET.parse(profile).getroot().findtext(".//f:segment_size", None, ns))
    env = ros_bench.profile_env(profile if with_profile else None, base=ros_env())
    peer = subprocess.Popen(
        [sys.executable, "-m", "leaneye.ros.bench", "echo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        sizes: list[int] = []
        while not sizes and time.monotonic() < deadline and peer.poll() is None:
            time.sleep(0.2)
            sizes = mapped_segment_sizes(peer.pid)
        assert sizes, f"the echo node mapped no Fast DDS segment (exit {peer.poll()})"
        if with_profile:
            assert max(sizes) >= segment_size
        else:
            assert max(sizes) < segment_size
    finally:
        peer.terminate()
        peer.communicate(timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "transport", "--profile", "{bad_xml}"], "not well-formed XML"),
        (["--mode", "transport", "--profile", "{not_fastdds}"], "expected a Fast DDS profiles document"),
        (["--mode", "transport", "--profile", "{missing}"], "is not a file"),
        (["--mode", "processes"], "--engine: required with --mode inprocess or processes"),
    ],
)
def test_bad_options_fail_with_one_line_before_measuring(frames_dir, tmp_path, args, message):
    (tmp_path / "bad.xml").write_text("<profiles><participant>")
    (tmp_path / "other.xml").write_text("<launch/>")
    paths = {"bad_xml": tmp_path / "bad.xml", "not_fastdds": tmp_path / "other.xml", "missing": tmp_path / "none.xml"}
    result = bench_ros(*[arg.format(**paths) for arg in args], str(frames_dir), "--runs", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "bench ros:" not in result.stderr  # no session was started
