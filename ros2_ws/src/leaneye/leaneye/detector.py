"""Frames in, detections out: letterbox, backend inference, decoding, NMS, boxes back in frame pixels.

    detector = Detector.from_engine("engines/yolox_nano", conf=0.25)
    detections = detector.detect(frame_bgr)   # (H, W, 3) uint8
    detections.boxes, detections.scores, detections.class_ids, detections.names, detections.timings

Per frame the work outside the backend is kept small: the input tensor is allocated once and its
padding written only when the frame size changes (then only where the previous frame was); each
frame only the resized picture is written into it (one resize, one split into planes, one
converting copy, one float32 scaling when the engine scales), the decoder reads only the rows of
the few candidates above the score threshold, and NMS is OpenCV's compiled loop. Right after
inference the CPU's caches hold the network, not this code: every NumPy or Python call then costs
several microseconds however small its arrays, so the number of distinct calls is what is kept
down (figures in `leaneye.detect_cli`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import Backend, BackendOptions, load_backend
from .engine import InputSpec, Manifest, load_manifest, model_file
from .errors import LeanEyeError
from .vision.decoders import DECODERS, DecodeParams
from .vision.letterbox import LetterboxTransform, letterbox_transform, resize_into
from .vision.nms import nms


@dataclass(frozen=True)
class Detections:
    """Detections of one frame; boxes are xyxy in the frame's pixels, clipped to it."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32, highest first
    class_ids: np.ndarray  # (N,) int64, indices into class_names
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    timings: dict = field(default_factory=dict)  # ms: preprocess, inference, postprocess

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> tuple[str, ...]:
        """The class name of each detection."""
        return tuple(self.class_names[i] for i in self.class_ids)


class InputTensor:
    """The network input, letterboxed from BGR uint8 frames with colour order and scaling applied."""

    def __init__(self, spec: InputSpec, align: str, pad_value: int):
        self.spec = spec
        self.align = align
        self.pad_value = pad_value
        self.tensor = np.empty(spec.shape, dtype=np.dtype(spec.dtype))
        std = np.asarray(spec.std if spec.std is not None else (1.0, 1.0, 1.0), dtype=np.float64)
        mean = np.asarray(spec.mean if spec.mean is not None else (0.0, 0.0, 0.0), dtype=np.float64)
        # tensor = (pixel * scale - mean) / std = pixel * gain + offset, per network channel
        self.gain = _per_channel(spec.scale / std)
        self.offset = _per_channel(-mean / std)
        self.scales = bool(np.any(self.gain != 1.0))
        self.shifts = bool(np.any(self.offset != 0.0))
        # Set per frame size by _prepare: the transform, the resized frame and its BGR planes, the
        # region of the tensor they go to (network channel order) and the same region in BGR order.
        # Outside the region the tensor always holds padding.
        self.image_size: tuple[int, int] | None = None
        self.transform: LetterboxTransform | None = None
        self.resized: np.ndarray | None = None
        self.planes: np.ndarray | None = None
        self.plane_list: list = []
        self.region: np.ndarray | None = None
        self.region_bgr: np.ndarray | None = None

    def _prepare(self, image_size: tuple[int, int]) -> None:
        """New frame size: new transform and buffers; the previous frame's region becomes padding."""
        padding = self.pad_value * self.gain + self.offset
        if self.region is None:
            self.tensor[0] = padding
        else:
            self.region[...] = padding
        transform = letterbox_transform(image_size, self.spec.size, self.align)
        self.resized = np.empty((transform.height, transform.width, 3), dtype=np.uint8)
        self.planes = np.empty((3, transform.height, transform.width), dtype=np.uint8)
        self.plane_list = list(self.planes)
        self.region = self.tensor[
            0,
            :,
            transform.pad_y : transform.pad_y + transform.height,
            transform.pad_x : transform.pad_x + transform.width,
        ]
        self.region_bgr = self.region[::-1] if self.spec.color == "rgb" else self.region
        self.transform = transform
        self.image_size = image_size

    def fill(self, frame: np.ndarray) -> LetterboxTransform:
        if frame.shape[:2] != self.image_size:
            self._prepare(frame.shape[:2])
        resize_into(frame, self.transform, self.resized)
        # De-interleaving into contiguous uint8 planes first makes the converting copy below read
        # contiguous rows: several times faster than converting the interleaved pixels directly.
        cv2.split(self.resized, mv=self.plane_list)
        np.copyto(self.region_bgr, self.planes)
        if self.scales:
            self.region *= self.gain
        if self.shifts:
            self.region += self.offset
        return self.transform


def _per_channel(values: np.ndarray):
    """Per-channel factors in float32, the tensor's type (a mixed-type NumPy loop costs several times
    more per frame); one scalar when all channels share it, which NumPy applies faster still."""
    if np.all(values == values[0]):
        return np.float32(values[0])
    return values.astype(np.float32).reshape(3, 1, 1)


def check_frame(frame) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        described = (
            f"shape {list(frame.shape)} dtype {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
        )
        raise LeanEyeError(f"frame: expected an (H, W, 3) uint8 BGR image, got {described}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise LeanEyeError(f"frame: expected a non-empty image, got {frame.shape[1]}x{frame.shape[0]} pixels")


class Detector:
    """A configured engine (manifest + backend) with detection settings; `activate()` before `detect`."""

    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        conf: float = 0.25,
        iou: float = 0.45,
        max_detections: int = 300,
        class_agnostic: bool = False,
        where: str = "the engine's decoder and class names",
    ):
        if not 0.0 <= conf <= 1.0:
            raise LeanEyeError(f"conf: expected a score threshold in [0, 1], got {conf}")
        if not 0.0 <= iou <= 1.0:
            raise LeanEyeError(f"iou: expected an NMS IoU threshold in [0, 1], got {iou}")
        if max_detections < 1:
            raise LeanEyeError(f"max_detections: expected a positive number, got {max_detections}")
        self.manifest = manifest
        self.backend = backend
        self.where = where  # where the decoder and class names come from, for errors: the manifest's fields
        self.iou = iou
        self.max_detections = max_detections
        self.class_agnostic = class_agnostic
        self.decoder = DECODERS[manifest.decoder]
        params = {k: tuple(v) for k, v in manifest.decoder_params.items()}  # strides
        self.decode_params = DecodeParams(
            input_size=manifest.input.size, num_classes=len(manifest.class_names), score_threshold=conf, **params
        )
        self.decode = self.decoder.build(self.decode_params)
        self.input = InputTensor(manifest.input, manifest.letterbox_align, manifest.letterbox_pad_value)

    @classmethod
    def from_engine(
        cls,
        engine_dir: Path | str,
        conf: float = 0.25,
        iou: float = 0.45,
        max_detections: int = 300,
        class_agnostic: bool = False,
        threads: int = 0,
    ) -> Detector:
        """Load, check and activate the engine in `engine_dir`; `threads` 0 = the backend's default."""
        manifest = load_manifest(engine_dir)
        backend = load_backend(
            manifest.backend,
            model_file(engine_dir, manifest),
            manifest.input.name,
            manifest.input.shape,
            BackendOptions(threads=threads),
            manifest.target,
        )
        detector = cls(
            manifest,
            backend,
            conf=conf,
            iou=iou,
            max_detections=max_detections,
            class_agnostic=class_agnostic,
            where=f"{Path(engine_dir) / 'manifest.json'}: fields 'decoder' and 'class_names'",
        )
        detector.activate()
        return detector

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    def activate(self) -> None:
        """Allocate the backend and run it once on a blank input. The first camera frame then does not
        pay for the runtime's first-run set-up, and outputs that do not fit the manifest's decoder or
        class names fail here, naming the manifest, rather than on that frame."""
        self.backend.activate()
        try:
            self._check_outputs()
        except BaseException:
            self.backend.deactivate()
            raise

    def _check_outputs(self) -> None:
        # A backend failure keeps its own message; only a decoder's complaint concerns the manifest.
        outputs = self.backend.infer(np.zeros(self.manifest.input.shape, np.dtype(self.manifest.input.dtype)))
        try:
            self.decode(outputs)
        except LeanEyeError as exc:
            raise LeanEyeError(f"{self.where} do not fit the model's outputs: {exc}") from None

    def deactivate(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    def preprocess(self, frame: np.ndarray) -> LetterboxTransform:
        """Write `frame` into the input tensor (`self.input.tensor`); returns the letterbox transform."""
        check_frame(frame)
        return self.input.fill(frame)

    def postprocess(self, outputs: list, transform: LetterboxTransform, image_size: tuple[int, int]):
        """Decode, suppress and map back to frame pixels: (boxes, scores, class_ids)."""
        boxes, scores, class_ids = self.decode(outputs)
        if not len(scores):
            return boxes, scores, class_ids
        if self.decoder.runs_nms:
            keep = nms(
                boxes,
                scores,
                class_ids,
                self.iou,
                class_agnostic=self.class_agnostic,
                max_detections=self.max_detections,
            )
        else:
            keep = np.argsort(-scores, kind="stable")[: self.max_detections]
        return transform.to_original(boxes.take(keep, axis=0), image_size), scores.take(keep), class_ids.take(keep)

    def detect(self, frame: np.ndarray) -> Detections:
        """Detect objects in one BGR uint8 frame (H, W, 3)."""
        start = time.perf_counter()
        transform = self.preprocess(frame)
        preprocessed = time.perf_counter()
        outputs = self.backend.infer(self.input.tensor)
        inferred = time.perf_counter()
        image_size = frame.shape[:2]
        boxes, scores, class_ids = self.postprocess(outputs, transform, image_size)
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "inference": (inferred - preprocessed) * 1e3,
            "postprocess": (done - inferred) * 1e3,
        }
        return Detections(boxes, scores, class_ids, self.class_names, image_size, timings)
