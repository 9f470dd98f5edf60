"""Label-free frames for distillation, calibration and measurement: image files and folders, videos,
rosbag2 image topics (sensor_msgs Image and CompressedImage, MCAP and sqlite3 storage) and
generated scenes, read by the runtime's own readers and turned into network inputs by the
runtime's own input path.

    frames = load_frames(FramesConfig(paths=("drive.mcap",), every=5, max_frames=200), "calibrate.frames", minimum=32)
    tensors = network_inputs([f.image for f in frames], load_manifest(engine_dir))   # what Detector feeds its backend

Order is deterministic: `paths` in the order given (a folder's images by name, a video's and a bag
topic's frames in recorded order), then the generated scenes by seed. `every` thins each video and
bag topic on its own; `max_frames` caps the total. Imports no torch.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from leaneye.bags import IMAGE_TYPES, STORAGE_SUFFIXES, FrameError, find_image_topic, iter_images, open_bag_reader
from leaneye.bench import is_bag
from leaneye.engine import Manifest
from leaneye.errors import LeanEyeError
from leaneye.image_io import IMAGE_SUFFIXES, image_paths, read_image
from leaneye.vision.letterbox import letterbox
from leaneye.vision.preprocess import InputTensor, check_frame

from .config import bounded, positive
from .models import contract

# Containers OpenCV's FFmpeg backend reads; anything else that is neither an image nor a bag is refused.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg")
DEFAULT_FRAME_SIZE = (1224, 370)  # width, height of generated frames: the scene sets' camera (data/__init__.py)


@dataclass(frozen=True)
class GeneratedFrames:
    """Procedural driving scenes (leaneye.scenes): seeds first_seed .. first_seed + sequences - 1,
    frames 0, frame_step, 2 * frame_step, ... of each, at the camera size of the scene sets."""

    first_seed: int = bounded(0, low=0)
    sequences: int = bounded(0, low=0)  # 0 = no generated frames
    frames_per_sequence: int = positive(8)
    frame_step: int = positive(4)


@dataclass(frozen=True)
class FramesConfig:
    paths: tuple[str, ...] = ()  # image files or folders, videos, rosbag2 bags (folder, .mcap, .db3)
    topic: str = ""  # the bags' image topic; "" = each bag's only image topic
    every: int = positive(1)  # keep every n-th frame of each video and bag topic
    max_frames: int = bounded(0, low=0)  # 0 = all
    scenes: GeneratedFrames = GeneratedFrames()


class Frame(NamedTuple):
    source: str  # where it came from: "a.png", "clip.mp4#12", "drive.mcap /camera/image_raw#40", "scene 1003#8"
    image: np.ndarray  # BGR uint8 (H, W, 3)


def _source_kind(path: Path) -> str:
    """ "bag", "video" or "images" (a file or a folder of them); anything else is a one-line error."""
    if not path.exists():
        raise LeanEyeError(f"{path}: no such file or folder; expected images, a video or a rosbag2 bag")
    if is_bag(path):
        return "bag"
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES and path.is_file():
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "images"
    raise LeanEyeError(
        f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) "
        f"or a rosbag2 bag (a folder, {', '.join(STORAGE_SUFFIXES)})"
    )


def _image_topic(reader, topic: str) -> str:
    """The topic to read: `topic` by image_transport's naming, or the bag's only image topic."""
    images = sorted(name for name, msgtype in reader.topics.items() if msgtype in IMAGE_TYPES)
    described = ", ".join(f"{name} ({reader.topics[name]})" for name in images) or "none"
    if topic:
        try:
            found = find_image_topic(reader.topics, topic)
        except LeanEyeError as exc:
            raise LeanEyeError(f"{reader.path}: {exc}") from None
    elif len(images) == 1:
        found = images[0]
    elif images:
        raise LeanEyeError(f"{reader.path}: several image topics ({described}); name one with frames.topic")
    else:
        raise LeanEyeError(f"{reader.path}: no image topic (sensor_msgs Image or CompressedImage); topics: {described}")
    if reader.counts.get(found, 0) == 0:
        raise LeanEyeError(f"{reader.path}: topic {found} holds no images; image topics present: {described}")
    return found


def _bag_frames(path: Path, topic: str, every: int) -> Iterator[Frame]:
    with open_bag_reader(path) as reader:
        found = _image_topic(reader, topic)
        bad = 0
        for index, item in enumerate(iter_images(reader, found)):
            if index % every:
                continue
            if isinstance(item, FrameError):
                bad += 1
                continue
            yield Frame(f"{path} {found}#{index}", item.image)
        if bad:  # one corrupt message in a long recording is skipped, not fatal; say how many
            print(f"{path} {found}: skipped {bad} frames that do not decode", file=sys.stderr)


def _video_frames(path: Path, every: int) -> Iterator[Frame]:
    from leaneye.video import iter_video_frames

    decoded = False
    for index, image in enumerate(iter_video_frames(path)):
        decoded = True
        if index % every == 0:
            yield Frame(f"{path}#{index}", image)
    if not decoded:
        raise LeanEyeError(f"{path}: OpenCV decoded no frames from it")


def _image_frames(path: Path) -> Iterator[Frame]:
    for file in image_paths([path]):
        yield Frame(str(file), read_image(file)[1])


def scene_frames(scenes: GeneratedFrames, frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE) -> Iterator[tuple]:
    """(seed, SceneFrame) of every generated frame, its ground truth included, in load_frames' order:
    the frames that `data.render_scene_set` letterboxes for the same seeds, at their camera size."""
    from leaneye.scenes.render import SceneSequence

    for seed in range(scenes.first_seed, scenes.first_seed + scenes.sequences):
        sequence = SceneSequence(seed, frame_size)
        for k in range(scenes.frames_per_sequence):
            yield seed, sequence.frame(k * scenes.frame_step)


def _scene_frames(scenes: GeneratedFrames) -> Iterator[Frame]:
    for seed, frame in scene_frames(scenes):
        yield Frame(f"scene {seed}#{frame.index}", frame.image)


def _sources(config: FramesConfig) -> list[tuple[str, Iterator[Frame]]]:
    """(description, frames) per source; every path's kind is checked before any frame is read."""
    sources: list[tuple[str, Iterator[Frame]]] = []
    for name in config.paths:
        path = Path(name)
        kind = _source_kind(path)
        if kind == "bag":
            described = f"{path} {config.topic}" if config.topic else str(path)
            sources.append((described, _bag_frames(path, config.topic, config.every)))
        elif kind == "video":
            sources.append((str(path), _video_frames(path, config.every)))
        else:
            sources.append((str(path), _image_frames(path)))
    scenes = config.scenes
    if scenes.sequences:
        last = scenes.first_seed + scenes.sequences - 1
        sources.append((f"generated scenes (seeds {scenes.first_seed}..{last})", _scene_frames(scenes)))
    return sources


def load_frames(config: FramesConfig, where: str, minimum: int = 1) -> list[Frame]:
    """Every frame `config` names, in order, capped at `max_frames`; fewer than `minimum` is an error
    naming `where` (the config key or option the frames came from)."""
    sources = _sources(config)
    limit = config.max_frames or None
    frames: list[Frame] = []
    for _, frames_of_source in sources:
        with contextlib.closing(frames_of_source):  # a capped bag or video is closed at once
            wanted = None if limit is None else limit - len(frames)
            frames.extend(itertools.islice(frames_of_source, wanted))
        if limit is not None and len(frames) >= limit:
            break
    if len(frames) < minimum:
        described = "; ".join(name for name, _ in sources) or "no sources (no paths, no generated scenes)"
        raise LeanEyeError(f"{where}: found {len(frames)} frames in {described}, need at least {minimum}")
    return frames


def frames_inputs(config: FramesConfig) -> dict[str, Path]:
    """The files behind `config`'s paths, for a stage record's inputs (their sha256 decides whether a
    stage reruns). Generated scenes have none: their config says everything about them."""
    inputs: dict[str, Path] = {}
    for number, name in enumerate(config.paths):
        path = Path(name)
        kind = _source_kind(path)
        if kind == "bag":
            with open_bag_reader(path) as reader:
                files = list(reader.files)
            metadata = path / "metadata.yaml"
            files = ([metadata] if metadata.is_file() else []) + files
        elif kind == "video":
            files = [path]
        else:
            files = image_paths([path])
        for file in files:
            role = f"frames[{number}]" if file == path else f"frames[{number}]/{file.relative_to(path)}"
            inputs[role] = file
    return inputs


def network_inputs(images: Sequence[np.ndarray], manifest: Manifest) -> np.ndarray:
    """(N, C, H, W) network inputs of BGR uint8 frames, made by the runtime's own InputTensor from the
    engine's manifest (letterbox, colour order, scaling): exactly what leaneye's Detector feeds its
    backend for each frame. The dtype is the manifest's input dtype."""
    tensor = InputTensor(manifest.input, manifest.letterbox_align, manifest.letterbox_pad_value)
    out = np.empty((len(images), *manifest.input.shape[1:]), dtype=tensor.tensor.dtype)
    for k, image in enumerate(images):
        check_frame(image)
        tensor.fill(image)
        out[k] = tensor.tensor[0]
    return out


def letterboxed(images: Sequence[np.ndarray], input_size: tuple[int, int] = contract.INPUT_SIZE) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR frames letterboxed to `input_size` (height, width) by LeanDet's input
    contract (models/contract.py), as the scene sets hold them for torch training."""
    out = np.empty((len(images), *input_size, 3), dtype=np.uint8)
    for k, image in enumerate(images):
        check_frame(image)
        letterbox(image, input_size, contract.LETTERBOX_ALIGN, contract.PAD_VALUE, out=out[k])
    return out
