"""`leaneye bag from-video`: a real dashcam clip becomes a rosbag2 bag with the video's frames and rate."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
from conftest import shared_fixtures_dir

from leaneye import bags, msgs
from leaneye.cli import bag as bag_cli
from leaneye.cli import run_command
from leaneye.errors import LeanEyeError
from leaneye.video import image_topics, video_info, video_to_bag

pytestmark = pytest.mark.runtime_core


def _highway():
    return shared_fixtures_dir() / "driving_video" / "highway_720p.mp4"


def _leaneye(argv: list[str]) -> int:
    """The `leaneye` command with only the bag subcommands registered."""
    parser = argparse.ArgumentParser(prog="leaneye")
    bag_cli.register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, argv)


def _video_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_from_video_frames_rate_and_pixels(tmp_path, capsys):
    video = _highway()
    out = tmp_path / "highway"
    assert (
        _leaneye(
            [
                "bag",
                "from-video",
                str(video),
                "--out",
                str(out),
                "--raw",
                "--frame-id",
                "dashcam",
                "--start-time",
                "1700000000.123456789",
            ]
        )
        == 0
    )
    assert "wrote 38 frames" in capsys.readouterr().out
    expected = _video_frames(video)
    assert len(expected) == 38 and video_info(video).fps == 25
    with bags.open_bag_reader(out) as reader:
        assert reader.topics == {"/camera/image_raw": msgs.IMAGE, "/camera/image_raw/compressed": msgs.COMPRESSED_IMAGE}
        assert reader.counts == {"/camera/image_raw": 38, "/camera/image_raw/compressed": 38}
        raw = list(bags.iter_images(reader, "/camera/image_raw"))
        compressed = list(
            bags.iter_images(reader, bags.find_image_topic(reader.topics, "/camera/image_raw/compressed"))
        )
        log_times = [log_time for topic, log_time, _ in reader.messages(["/camera/image_raw/compressed"])]
    for frames in (raw, compressed):
        assert all(isinstance(frame, bags.ImageFrame) for frame in frames) and len(frames) == 38
        assert np.diff([frame.stamp_ns for frame in frames]).tolist() == [40_000_000] * 37
        assert {frame.header.frame_id for frame in frames} == {"dashcam"}
        # Exact to the nanosecond, header stamp and bag time alike.
        assert frames[0].stamp_ns == 1_700_000_000_123_456_789
        assert (frames[0].header.stamp.sec, frames[0].header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert log_times == [frame.stamp_ns for frame in compressed]
    for index in (0, 17, 37):
        assert np.array_equal(raw[index].image, expected[index])
        assert cv2.PSNR(compressed[index].image, expected[index]) > 30


def test_from_video_sqlite3_with_a_raw_topic_name(tmp_path):
    out = tmp_path / "front"
    count = video_to_bag(_highway(), out, topic="/front/image", storage="sqlite3", fps=10, start_ns=5_000_000_000)
    assert count == 38
    info = bags.bag_info(out, count=True)
    assert info.storage == "sqlite3" and [(topic.name, topic.count) for topic in info.topics] == [
        ("/front/image/compressed", 38)
    ]
    assert (info.start_ns, info.duration_ns) == (5_000_000_000, 3_700_000_000)
    assert (
        image_topics("/front/image")
        == image_topics("/front/image/compressed")
        == ("/front/image", "/front/image/compressed")
    )


def test_from_video_into_a_single_mcap_file(tmp_path, capsys):
    out = tmp_path / "highway.mcap"
    assert _leaneye(["bag", "from-video", str(_highway()), "--out", str(out), "--fps", "5"]) == 0
    assert "wrote 38 frames" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir()] == ["highway.mcap"]
    info = bags.bag_info(out, count=True)
    assert (info.storage, info.files) == ("mcap", [out])
    assert [(topic.name, topic.count) for topic in info.topics] == [("/camera/image_raw/compressed", 38)]
    assert info.duration_ns == 37 * 200_000_000


def test_a_truncated_video_is_an_error_in_one_line_and_leaves_no_bag(tmp_path, capfd):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(_highway().read_bytes()[: _highway().stat().st_size // 2])
    out = tmp_path / "bag.mcap"
    assert _leaneye(["bag", "from-video", str(truncated), "--out", str(out)]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip() and "%|" not in line]  # less tqdm
    assert len(lines) == 1 and lines[0].startswith(f"leaneye: error: {truncated}: decoding stopped after "), lines
    assert "of the 38 frames its container states" in lines[0]
    assert [path.name for path in tmp_path.iterdir()] == ["truncated.mp4"]


def test_stamps_must_fit_ros_time_and_fps_must_be_positive(tmp_path, capsys):
    out = tmp_path / "bag"
    assert _leaneye(["bag", "from-video", str(_highway()), "--out", str(out), "--start-time", "2147483647"]) == 2
    assert "the 38 frames would be stamped up to 2147483648 s" in capsys.readouterr().err
    for fps in ("0", "-5"):
        assert _leaneye(["bag", "from-video", str(_highway()), "--out", str(out), "--fps", fps]) == 2
        assert "--fps: expected a positive frame rate" in capsys.readouterr().err
    assert not out.exists()


def test_unreadable_video_leaves_no_bag(tmp_path, capfd):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    out = tmp_path / "bag"
    assert _leaneye(["bag", "from-video", str(not_a_video), "--out", str(out)]) == 2
    # One line: FFmpeg's own complaint ("moov atom not found") is silenced.
    assert capfd.readouterr().err == f"leaneye: error: {not_a_video}: OpenCV cannot open it as a video\n"
    assert not out.exists()
    with pytest.raises(LeanEyeError, match="no such video file"):
        video_to_bag(tmp_path / "absent.mp4", out)
    with pytest.raises(SystemExit):
        _leaneye(["bag", "from-video", str(_highway()), "--out", str(out), "--storage", "rosbag1"])
    assert "--storage" in capfd.readouterr().err and not out.exists()
    mismatched = tmp_path / "bag.db3"
    assert _leaneye(["bag", "from-video", str(_highway()), "--out", str(mismatched), "--storage", "mcap"]) == 2
    assert "bag.db3: a .db3 file holds sqlite3 storage, not mcap" in capfd.readouterr().err
    assert not mismatched.exists()
    with pytest.raises(SystemExit):
        _leaneye(["bag", "from-video", str(_highway()), "--out", str(out), "--start-time", "yesterday"])
    assert "--start-time" in capfd.readouterr().err and not out.exists()
