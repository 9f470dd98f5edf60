"""Dashcam videos as rosbag2 bags of camera images, so real footage can be replayed like a recording."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import msgs
from .bags import COMPRESSED_SUFFIX, open_bag_writer
from .errors import LeanEyeError, ParameterError

# OpenCV's FFmpeg backend prints the decoder's own complaints ("moov atom not found", "Invalid NAL
# unit size") to stderr; the errors raised here say what went wrong in one line instead. It reads
# this variable once, when the first capture opens; a value the user set is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
# How far a decoded frame count may fall short of the container's before the video counts as
# truncated: containers without an index (MKV, AVI) estimate their count from duration x rate.
_FRAME_COUNT_SLACK = 0.01


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float  # as the container states it; nan when unknown
    frame_count: int  # as the container states it; may be approximate, 0 when unknown
    width: int
    height: int


def _open(path: Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    if not path.is_file():
        raise LeanEyeError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise LeanEyeError(f"{path}: OpenCV cannot open it as a video")
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    info = VideoInfo(
        path=path,
        fps=fps if fps > 0 else math.nan,
        frame_count=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    return capture, info


def video_info(path: Path | str) -> VideoInfo:
    capture, info = _open(Path(path))
    capture.release()
    return info


def iter_video_frames(path: Path | str) -> Iterator[np.ndarray]:
    """Every frame of the video, BGR uint8 (H, W, 3), in order."""
    capture, _ = _open(Path(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def image_topics(topic: str) -> tuple[str, str]:
    """(raw, compressed) topic names for `topic`, given either way (image_transport naming)."""
    base = topic[: -len(COMPRESSED_SUFFIX)] if topic.endswith(COMPRESSED_SUFFIX) else topic
    return base, base + COMPRESSED_SUFFIX


def video_to_bag(
    video: Path | str,
    out: Path | str,
    topic: str = "/camera/image_raw/compressed",
    frame_id: str = "camera",
    raw: bool = False,
    storage: str | None = None,
    force: bool = False,
    fps: float | None = None,
    start_ns: int = 0,
    jpeg_quality: int = 90,
) -> int:
    """Write every frame of `video` as sensor_msgs/msg/CompressedImage (JPEG) on the compressed topic.

    Frame i is stamped start_ns + i / fps (header stamp and log time alike). With `raw`, the same
    frames also go as sensor_msgs/msg/Image bgr8 on the raw topic. `fps` overrides the
    container's frame rate. Returns the number of frames written.
    """
    video = Path(video)
    if fps is not None and not (0 < fps < math.inf):
        raise ParameterError("fps", f"expected a positive frame rate, got {fps}")
    info = video_info(video)
    rate = info.fps if fps is None else float(fps)
    if not rate > 0 or math.isinf(rate):
        raise ParameterError("fps", f"{video} states no frame rate; expected one")
    last_ns = int(start_ns) + round(max(info.frame_count - 1, 0) * 1e9 / rate)
    if not 0 <= start_ns <= last_ns < msgs.MAX_STAMP_NS:
        raise ParameterError(
            "start_ns",
            f"the {info.frame_count} frames would be stamped up to {last_ns / 1e9:.0f} s "
            f"after the epoch; ROS 2 stamps hold int32 seconds (before 2038-01-19)",
        )
    raw_topic, compressed_topic = image_topics(topic)
    written = 0
    with open_bag_writer(out, storage=storage, force=force) as writer:
        writer.add_topic(compressed_topic, msgs.COMPRESSED_IMAGE)
        if raw:
            writer.add_topic(raw_topic, msgs.IMAGE)
        progress = tqdm(total=info.frame_count or None, unit="frame", desc=f"{video.name} -> bag", file=sys.stderr)
        with progress:
            for index, frame in enumerate(iter_video_frames(video)):
                stamp_ns = int(start_ns) + round(index * 1e9 / rate)
                writer.write(
                    compressed_topic,
                    stamp_ns,
                    msgs.compressed_image_msg(frame, stamp_ns, frame_id, fmt="jpeg", quality=jpeg_quality),
                )
                if raw:
                    writer.write(raw_topic, stamp_ns, msgs.image_msg(frame, stamp_ns, frame_id, encoding="bgr8"))
                written += 1
                progress.update()
        if written == 0:
            raise LeanEyeError(f"{video}: OpenCV decoded no frames from it")
        if written < info.frame_count * (1 - _FRAME_COUNT_SLACK) - 1:
            raise LeanEyeError(
                f"{video}: decoding stopped after {written} of the {info.frame_count} frames its "
                f"container states (truncated or damaged file); no bag written"
            )
    return written
