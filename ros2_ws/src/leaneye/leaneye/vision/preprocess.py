"""Frames into the network's input tensor: letterbox, colour order, scaling.

The input tensor is allocated once and its padding written only when the frame size changes (then
only where the previous frame was); each frame only the resized picture is written into it (one
resize, one split into planes, one converting copy, one float32 scaling when the engine scales).
Right after inference the CPU's caches hold the network, not this code: every NumPy or Python call
then costs several microseconds however small its arrays, so the number of distinct calls is what
is kept down (measurement notes: docs/runtime-overhead.md, `leaneye bench overhead`).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..engine import InputSpec
from ..errors import LeanEyeError
from .letterbox import LetterboxTransform, letterbox_transform, resize_into


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
