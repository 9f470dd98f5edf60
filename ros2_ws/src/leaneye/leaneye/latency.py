"""Per-frame stage timings and their summary (percentiles per stage, throughput).

Pure: no ROS, no message classes. `leaneye.msgs.frame_latency_msg` turns a FrameLatency into the
leaneye_msgs/msg/FrameLatency message.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import LeanEyeError

STAGES = ("decode", "preprocess", "inference", "postprocess", "total")
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class FrameLatency:
    """One frame's timings in milliseconds: the fields of leaneye_msgs/msg/FrameLatency less its header.

    The last three are the detector node's (transport and mailbox); `leaneye replay` leaves them 0.
    """

    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    num_detections: int
    receipt_to_publish_ms: float = 0.0
    age_ms: float = 0.0
    frames_dropped: int = 0

    def timings(self) -> dict[str, float]:
        """The stage -> milliseconds dict that LatencySummary takes."""
        return {stage: getattr(self, f"{stage}_ms") for stage in STAGES}


class LatencySummary:
    """p50/p90/p99/max per stage over many frames, and throughput in frames per wall-clock second.

    `frames` holds one dict per frame with the keys of STAGES (milliseconds); `wall_s` is the
    wall-clock time the frames took end to end (which includes time between frames, so
    throughput is not simply 1000 / mean total).
    """

    def __init__(self, frames: Sequence[Mapping[str, float]], wall_s: float):
        if not frames:
            raise LeanEyeError("latency: no frames were timed")
        if not wall_s > 0:
            raise LeanEyeError(f"latency: wall_s must be positive seconds, got {wall_s}")
        table = np.empty((len(frames), len(STAGES)), dtype=np.float64)
        for index, frame in enumerate(frames):
            missing = [stage for stage in STAGES if stage not in frame]
            if missing:
                raise LeanEyeError(f"latency: frame {index} lacks the stage(s) {', '.join(missing)}")
            table[index] = [frame[stage] for stage in STAGES]
        if not np.isfinite(table).all() or (table < 0).any():
            raise LeanEyeError("latency: stage timings must be finite, non-negative milliseconds")
        self.num_frames = len(frames)
        self.wall_s = float(wall_s)
        self.throughput_fps = self.num_frames / self.wall_s
        # stage -> {"p50": ms, "p90": ms, "p99": ms, "max": ms, "mean": ms}
        self.stages: dict[str, dict[str, float]] = {}
        for column, stage in enumerate(STAGES):
            values = table[:, column]
            stats = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
            stats["max"] = float(values.max())
            stats["mean"] = float(values.mean())
            self.stages[stage] = stats

    def as_dict(self) -> dict:
        """Plain data for JSON reports."""
        return {
            "frames": self.num_frames,
            "wall_s": self.wall_s,
            "throughput_fps": self.throughput_fps,
            "stages_ms": {stage: dict(stats) for stage, stats in self.stages.items()},
        }

    def format_table(self) -> str:
        columns = [f"p{q}" for q in PERCENTILES] + ["max", "mean"]
        lines = [f"{'stage (ms)':<12}" + "".join(f"{name:>10}" for name in columns)]
        for stage, stats in self.stages.items():
            lines.append(f"{stage:<12}" + "".join(f"{stats[name]:>10.2f}" for name in columns))
        lines.append(f"{self.num_frames} frames in {self.wall_s:.2f} s wall: {self.throughput_fps:.1f} frames/s")
        return "\n".join(lines)


class RecentFrames:
    """The frames published in the last `window_s` seconds: their rate and receipt -> publish
    percentiles, for the detector node's 1 Hz diagnostics. Thread-safe (worker adds, timer reads)."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._frames: deque[tuple[float, float]] = deque()  # (monotonic seconds, milliseconds)
        self._lock = threading.Lock()

    def add(self, now_s: float, latency_ms: float) -> None:
        with self._lock:
            self._frames.append((now_s, latency_ms))
            self._forget(now_s)

    def _forget(self, now_s: float) -> None:
        while self._frames and self._frames[0][0] < now_s - self.window_s:
            self._frames.popleft()

    def summary(self, now_s: float) -> dict[str, float]:
        """fps over the window, p50/p99 milliseconds (0 when no frame was published in it)."""
        with self._lock:
            self._forget(now_s)
            values = np.array([ms for _, ms in self._frames], dtype=np.float64)
        if values.size == 0:
            return {"fps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "frames": 0}
        return {
            "fps": values.size / self.window_s,
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "frames": int(values.size),
        }
