"""bag_player_node, bag_recorder_node and replay.launch.py on a real ROS 2 graph: `ros2 launch` runs
player, detector and recorder as separate processes, as on a vehicle; the recorder's output bag and
report are read back with leaneye's bag reader and compared with `leaneye replay` on the same bag
and engine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_fixtures_dir
from helpers import builtin_rows, write_builtin_engine
from ruamel.yaml import YAML

from leaneye import bags, msgs
from leaneye.replay import DETECTIONS_TOPIC, LATENCY_TOPIC, ReplayOptions, replay_bag
from leaneye.scenes.dataset import GROUND_TRUTH_TOPIC, IGNORE_TOPIC, IMAGE_TOPIC, write_scene_dataset
from leaneye.scenes.render import generate_frames

from .conftest import ros_env

pytest.importorskip("rclpy")

FRAMES = 24
START_NS = 1_700_000_000 * 10**9  # stamps like a real recording's (seconds since the epoch)
LAUNCH_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def scene_bag(tmp_path_factory) -> Path:
    """FRAMES frames of a generated drive at full KITTI-like size, with ground truth: an MCAP bag folder."""
    out = tmp_path_factory.mktemp("scenes") / "scenes"
    write_scene_dataset(out, generate_frames(FRAMES, seed=11, start_ns=START_NS))
    return out / "bag"


@pytest.fixture(scope="module")
def constant_engine(tmp_path_factory) -> Path:
    """An engine that finds one car in every frame, at once (where the model does not matter)."""
    return write_builtin_engine(
        tmp_path_factory.mktemp("engine") / "engine", builtin_rows([([20, 20, 60, 60], 0, 0.9)])
    )


class Finished:
    def __init__(self, returncode: int, output: str):
        self.returncode, self.output = returncode, output


def _run(command: list[str], timeout_s: float, cwd: Path) -> Finished:
    """Run `command` in a process group of its own; on a timeout or an error, SIGINT the group (launch
    passes it on to its nodes), then SIGKILL it."""
    process = subprocess.Popen(
        command,
        env=ros_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    return Finished(process.returncode, output)


def _launch(cwd: Path, **arguments) -> Finished:
    command = ["ros2", "launch", "leaneye", "replay.launch.py"] + [
        f"{key}:={value}" for key, value in arguments.items()
    ]
    return _run(command, LAUNCH_TIMEOUT_S, cwd)


def _by_stamp(bag: Path, topic: str) -> dict:
    """header stamp -> message of every message on `topic`."""
    with bags.open_bag_reader(bag) as reader:
        messages = [msg for _, _, msg in reader.messages([topic])]
    by_stamp = {msgs.stamp_to_ns(msg.header.stamp): msg for msg in messages}
    assert len(by_stamp) == len(messages), f"{bag} {topic}: two messages share a stamp"
    return by_stamp


def test_closed_loop_replay_records_what_leaneye_replay_publishes_frame_by_frame(tmp_path, scene_bag, scene_engine):
    out, report = tmp_path / "graph.mcap", tmp_path / "graph.json"
    result = _launch(tmp_path, bag=scene_bag, engine=scene_engine, mode="closed_loop", out=out, report=report)
    assert result.returncode == 0, result.output
    assert f"closed_loop playback, {FRAMES} of {FRAMES} frames published, {FRAMES} answered" in result.output
    assert "0 dropped" in result.output and "0 timed out" in result.output and "mAP50" in result.output

    offline = tmp_path / "offline.mcap"
    expected = replay_bag(scene_bag, scene_engine, ReplayOptions(bootstrap=0), out=offline, progress=False)
    recorded, replayed = _by_stamp(out, DETECTIONS_TOPIC), _by_stamp(offline, DETECTIONS_TOPIC)
    assert sorted(recorded) == sorted(replayed) == sorted(_by_stamp(scene_bag, IMAGE_TOPIC))
    for stamp, msg in replayed.items():
        boxes, scores, class_ids, _ = msgs.boxes_from_detection_array(msg)
        got_boxes, got_scores, got_class_ids, _ = msgs.boxes_from_detection_array(recorded[stamp])
        assert got_class_ids == class_ids, f"stamp {stamp}"
        np.testing.assert_allclose(got_boxes, boxes, rtol=0, atol=1e-3, err_msg=f"stamp {stamp}")
        np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-6, err_msg=f"stamp {stamp}")
        assert recorded[stamp].header.frame_id == msg.header.frame_id
    assert sorted(_by_stamp(out, LATENCY_TOPIC)) == sorted(recorded)
    for topic in (GROUND_TRUTH_TOPIC, IGNORE_TOPIC):  # the ground truth went through as recorded
        truth = _by_stamp(scene_bag, topic)
        assert {stamp: msgs.boxes_from_detection_array(m)[2] for stamp, m in _by_stamp(out, topic).items()} == {
            stamp: msgs.boxes_from_detection_array(m)[2] for stamp, m in truth.items()
        }

    summary = json.loads(report.read_text())
    assert summary["playback"]["frames_published"] == summary["frames"] == FRAMES
    assert summary["playback"]["drops"] == 0 and summary["playback"]["mode"] == "closed_loop"
    assert summary["detections"] == expected.detections
    assert summary["engine"] == str(scene_engine) and summary["settings"]["published"]["conf"] == pytest.approx(0.25)
    assert summary["evaluation"]["images"] == FRAMES and 0 < summary["evaluation"]["mAP50"] <= 1
    assert summary["latency"]["throughput_fps"] > 0 and summary["latency"]["stages_ms"]["inference"]["p50"] > 0


def test_realtime_faster_than_inference_counts_the_frames_the_detector_drops(tmp_path, scene_bag, scene_engine):
    # 10 Hz recorded, played 20x: a frame every 5 ms, several times faster than the model runs here.
    report = tmp_path / "realtime.json"
    result = _launch(tmp_path, bag=scene_bag, engine=scene_engine, mode="realtime", rate="20", report=report)
    assert result.returncode == 0, result.output
    summary = json.loads(report.read_text())
    playback = summary["playback"]
    assert playback["mode"] == "realtime" and playback["frames_published"] == FRAMES
    assert 0 < summary["frames"] < FRAMES
    assert playback["drops"] == FRAMES - summary["frames"] > 0
    assert f"realtime playback, {FRAMES} of {FRAMES} frames published, {summary['frames']} answered" in result.output
    assert f"{playback['drops']} dropped" in result.output
    # /clock runs on between frames: the frame age measures the detector's delay, in the recording's time.
    assert summary["transport_ms"]["age"]["max"] > 0


def _player(bag: Path | str, cwd: Path) -> Finished:
    return _run(["ros2", "run", "leaneye", "bag_player_node", "--ros-args", "-p", f"bag:={bag}"], 60, cwd)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line]


@pytest.mark.parametrize("case", ["missing", "corrupt", "image-less"])
def test_a_bag_the_player_cannot_play_is_one_error_line_naming_it_and_exit_code_1(tmp_path, case):
    if case == "missing":
        bag, reason = tmp_path / "absent.mcap", "no such bag"
    elif case == "corrupt":
        bag, reason = tmp_path / "corrupt.mcap", "not a readable mcap bag"
        bag.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        bag, reason = shared_fixtures_dir() / "rosbag2_talker_sqlite3", "image topics present: none"
    result = _player(bag, tmp_path)
    assert result.returncode == 1, result.output
    [line] = _errors(result.output)
    assert str(bag) in line and reason in line, line
    assert "Traceback" not in result.output


def test_a_player_failing_mid_bag_leaves_the_recorder_writing_nothing(tmp_path, scene_bag, constant_engine):
    """The bag's metadata promises one frame more than it holds: the player plays them all, then fails
    on the count check before it can say finished; the launch shuts down, and the recorder, which has
    every frame's detections, writes no output bag and no report."""
    short = tmp_path / "short_bag"
    short.mkdir()
    for file in scene_bag.iterdir():
        (short / file.name).symlink_to(file)
    yaml = YAML()
    (short / "metadata.yaml").unlink()
    metadata = yaml.load((scene_bag / "metadata.yaml").read_text())
    info = metadata["rosbag2_bagfile_information"]
    info["message_count"] += 1
    [images] = [entry for entry in info["topics_with_message_count"] if entry["topic_metadata"]["name"] == IMAGE_TOPIC]
    images["message_count"] += 1
    with (short / "metadata.yaml").open("w") as stream:
        yaml.dump(metadata, stream)
    out, report = tmp_path / "out", tmp_path / "report.json"

    result = _launch(tmp_path, bag=short, engine=constant_engine, out=out, report=report)
    player_errors = [line for line in _errors(result.output) if "[bag_player]" in line]
    assert len(player_errors) == 1 and f"{short}: topic {IMAGE_TOPIC}: read {FRAMES}" in player_errors[0], result.output
    [received] = re.findall(r"\((\d+) frames of detections received\): no output bag written", result.output)
    assert int(received) > 0, result.output  # it had something to write, and wrote none of it
    assert sorted(path.name for path in tmp_path.iterdir()) == ["short_bag"]  # no output, no temporary left
