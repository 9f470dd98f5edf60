"""Training and evaluation frames from the procedural scenes, letterboxed to the network input by
the runtime's own letterbox, as LeanDet's input contract (models/contract.py) says.

Frames come from many short sequences (one seed each, every `frame_step`-th frame), so a set is
diverse in layout, lighting and traffic while each sequence stays a smooth camera sequence. Sets
are rendered once (in parallel) and cached as .npz keyed by everything that shapes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from leaneye.atomic import atomic_path
from leaneye.scenes.render import SceneFrame, SceneSequence
from leaneye.vision.letterbox import LetterboxTransform, letterbox, letterbox_transform

from ..models import contract

CACHE_VERSION = 2  # bump when the renderer changes what a seed produces


@dataclass(frozen=True)
class SceneSetConfig:
    first_seed: int
    sequences: int
    frames_per_sequence: int
    frame_step: int = 1
    frame_size: tuple[int, int] = (1224, 370)  # width, height of the camera frames
    input_size: tuple[int, int] = contract.INPUT_SIZE  # network input height, width
    letterbox_align: str = contract.LETTERBOX_ALIGN
    pad_value: int = contract.PAD_VALUE

    def __post_init__(self):
        for name in ("sequences", "frames_per_sequence", "frame_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} = {getattr(self, name)}: expected a positive number")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "cache_version": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SceneSet:
    """Letterboxed frames (N, H, W, 3) uint8 BGR and per-frame targets in network-input pixels."""

    images: np.ndarray
    boxes: list  # per frame (M, 4) float32 xyxy, labelled objects
    labels: list  # per frame (M,) int64
    ignore: list  # per frame (K, 4) float32, ignore regions of any class
    frames: list  # per frame SceneFrame without pixels (ground truth in original pixels), for evaluation
    transform: LetterboxTransform  # the same for every frame: one camera size


def _render_sequence(config: SceneSetConfig, seed: int) -> list[tuple[np.ndarray, SceneFrame]]:
    sequence = SceneSequence(seed, config.frame_size)
    out = []
    for k in range(config.frames_per_sequence):
        frame = sequence.frame(k * config.frame_step)
        image, _ = letterbox(frame.image, config.input_size, config.letterbox_align, config.pad_value)
        frame.image = np.zeros((frame.image.shape[0], frame.image.shape[1], 0), np.uint8)  # keep only its size
        out.append((image, frame))
    return out


def render_scene_set(
    config: SceneSetConfig, cache_dir: Path | None = None, workers: int | None = None, desc: str = "render"
) -> SceneSet:
    """Render (or load from `cache_dir`) the frames of `config`, with a progress bar."""
    from tqdm import tqdm

    cache = Path(cache_dir) / f"scenes-{config.key()}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        return _load(cache, config)
    seeds = range(config.first_seed, config.first_seed + config.sequences)
    results: list = []
    workers = workers or min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) as pool, tqdm(total=len(seeds), desc=desc, unit="seq", file=sys.stderr) as bar:
        for rendered in pool.map(_render_sequence, [config] * len(seeds), seeds, chunksize=4):
            results.extend(rendered)
            bar.update(1)
    images = np.stack([r[0] for r in results])
    frames = [r[1] for r in results]
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, objects=np.array(json.dumps(_frames_to_json(frames))))
    return _scene_set(config, images, frames)


def _frames_to_json(frames: list[SceneFrame]) -> list:
    return [
        {
            "index": f.index,
            "stamp_ns": f.stamp_ns,
            "size": list(f.image.shape[:2]),
            "objects": [asdict(o) for o in f.objects],
        }
        for f in frames
    ]


def _load(cache: Path, config: SceneSetConfig) -> SceneSet:
    from leaneye.scenes.render import SceneObject

    with np.load(cache, allow_pickle=False) as data:
        images = data["images"]
        entries = json.loads(str(data["objects"]))
    frames = [
        SceneFrame(
            e["index"],
            e["stamp_ns"],
            np.zeros((*e["size"], 0), np.uint8),
            [SceneObject(**{**o, "box": tuple(o["box"])}) for o in e["objects"]],
        )
        for e in entries
    ]
    return _scene_set(config, images, frames)


def _scene_set(config: SceneSetConfig, images: np.ndarray, frames: list[SceneFrame]) -> SceneSet:
    width, height = config.frame_size
    transform = letterbox_transform((height, width), config.input_size, config.letterbox_align)
    boxes, labels, ignore = [], [], []
    for frame in frames:
        keep = [o for o in frame.objects if not o.ignore]
        dropped = [o for o in frame.objects if o.ignore]
        boxes.append(transform.to_network(np.array([o.box for o in keep], np.float32).reshape(-1, 4)))
        labels.append(np.array([o.class_id for o in keep], np.int64))
        ignore.append(transform.to_network(np.array([o.box for o in dropped], np.float32).reshape(-1, 4)))
    return SceneSet(images, boxes, labels, ignore, frames, transform)
