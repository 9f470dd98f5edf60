"""Benchmarks of the runtime: frames decoded afresh in turn, and the time spent outside the
backend's inference call."""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import LeanEyeError
from .image_io import decode_image, image_paths, read_image

MIN_BENCH_RUNS = 200


class BenchFrame(NamedTuple):
    image: np.ndarray  # BGR uint8, decoded just now
    decode_ms: float  # file or message to BGR pixels


def is_bag(source: Path) -> bool:
    """A rosbag2 folder or storage file, as `leaneye.bags.open_bag_reader` takes them."""
    from .bags import STORAGE_SUFFIXES

    if source.is_dir():
        return (source / "metadata.yaml").is_file() or any(p.suffix in STORAGE_SUFFIXES for p in source.iterdir())
    return source.suffix in STORAGE_SUFFIXES


class FrameCycle:
    """Endless benchmark frames: the first `frames` frames of `sources` (image files, directories
    of images, bags' image `topic`) in order, round and round.

    Each frame is decoded again every time it comes up, as a node would receive it: a fresh frame
    in memory, neither kept warm nor gone cold in a list. Bags stay open in `stack`.
    """

    def __init__(self, sources: list[Path], topic: str, frames: int, stack: contextlib.ExitStack):
        from .bags import find_image_topic, open_bag_reader

        self.frames = frames
        self.distinct = 0  # frames in one round, known once the first round is done
        self.bad_frames: set = set()  # (bag, topic, message index) of bag messages that do not decode
        self.described: list[str] = []
        self._rounds: list = []  # per source, a function that starts one pass over its frames
        for source in sources:
            if is_bag(source):
                reader = stack.enter_context(open_bag_reader(source))
                topic_found = find_image_topic(reader.topics, topic)
                self._rounds.append(functools.partial(self._bag_pass, reader, topic_found))
                self.described.append(f"{source} {topic_found}")
            else:
                # Read (and check) once; decoded on every pass.
                files = [(path, read_image(path)[0]) for path in image_paths([source])[:frames]]
                self._rounds.append(functools.partial(self._image_file_pass, files))
                self.described.append(str(source) if len(files) == 1 else f"{source} ({len(files)} images)")
        self._frames = self._endless()

    def __iter__(self) -> Iterator[BenchFrame]:
        return self

    def __next__(self) -> BenchFrame:
        return next(self._frames)

    def _endless(self) -> Iterator[BenchFrame]:
        while True:
            count = 0
            for start_pass in self._rounds:
                with contextlib.closing(start_pass()) as one_pass:
                    for frame in itertools.islice(one_pass, self.frames - count):
                        count += 1
                        yield frame
                if count == self.frames:
                    break
            if count == 0:
                raise LeanEyeError(f"{'; '.join(self.described)}: no frame decodes")
            self.distinct = count

    @staticmethod
    def _image_file_pass(files: list) -> Iterator[BenchFrame]:
        for path, data in files:
            started = time.perf_counter()
            image = decode_image(data, path)
            yield BenchFrame(image, (time.perf_counter() - started) * 1e3)

    def _bag_pass(self, reader, topic: str) -> Iterator[BenchFrame]:
        from .bags import FrameError, iter_images

        for item in iter_images(reader, topic):
            if isinstance(item, FrameError):
                self.bad_frames.add((str(reader.path), topic, item.index))
                continue
            yield BenchFrame(item.image, item.decode_ms)


def measure_overhead(detector, frames: Iterator[BenchFrame], runs: int) -> dict:
    """Medians over `runs` frames (ms): decoding, preprocess, the inference call, postprocess, glue
    (the rest of `detect`) and everything outside the inference call, all measured on the same
    frame in every run, so that they share the machine's state."""
    from tqdm import tqdm

    detector.detect(next(frames).image)  # the first call builds caches (grids, buffers): not a steady-state frame
    stages: dict = {name: [] for name in ("decode", "preprocess", "inference", "postprocess", "glue", "outside")}
    sizes: set = set()
    for _ in tqdm(range(runs), desc="bench overhead", unit="frame", file=sys.stderr):
        frame = next(frames)
        start = time.perf_counter()
        found = detector.detect(frame.image)
        total_ms = (time.perf_counter() - start) * 1e3
        timings = found.timings
        outside_ms = total_ms - timings["inference"]
        stages["decode"].append(frame.decode_ms)
        stages["outside"].append(outside_ms)
        stages["glue"].append(outside_ms - timings["preprocess"] - timings["postprocess"])
        for name in ("preprocess", "inference", "postprocess"):
            stages[name].append(timings[name])
        sizes.add(frame.image.shape[1::-1])
    result = {f"{name}_ms": float(np.median(values)) for name, values in stages.items()}
    result["outside_p90_ms"] = float(np.percentile(stages["outside"], 90))
    result["ratio"] = result["outside_ms"] / result["inference_ms"]
    result["runs"] = runs
    result["sizes"] = sorted(sizes)
    return result
