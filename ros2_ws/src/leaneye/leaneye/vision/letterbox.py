"""Letterboxing: fit any frame into the network's input (square or rectangular) keeping its aspect ratio.

The inverse (`LetterboxTransform.to_original`) is what puts boxes back in original image pixels,
whatever the camera's resolution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LetterboxTransform:
    """original pixel = (network pixel - pad) / scale; the resized frame covers `width` x `height`
    network pixels from (pad_x, pad_y)."""

    scale: float
    pad_x: int
    pad_y: int
    width: int
    height: int

    def to_original(self, boxes_xyxy: np.ndarray, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Map (N, 4) network-input boxes to original pixels; clip to `image_size` (height, width) if given."""
        # The same few ufuncs as decoding and NMS, in place: right after inference each new kind of
        # NumPy call costs microseconds, a repeated one much less.
        out = np.asarray(boxes_xyxy, dtype=np.float32) - self._pad_xyxy
        out *= self._inverse_scale
        if image_size is not None:
            np.maximum(out, 0, out=out)
            np.minimum(out, _frame_corner(*image_size), out=out)
        return out

    @functools.cached_property
    def _pad_xyxy(self) -> np.ndarray:
        return np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)

    @functools.cached_property
    def _inverse_scale(self) -> np.float32:
        return np.float32(1.0 / self.scale)

    def to_network(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        out = np.empty_like(boxes_xyxy, dtype=np.float32)
        out[:, 0::2] = boxes_xyxy[:, 0::2] * self.scale + self.pad_x
        out[:, 1::2] = boxes_xyxy[:, 1::2] * self.scale + self.pad_y
        return out


@functools.lru_cache(maxsize=16)
def _frame_corner(height: int, width: int) -> np.ndarray:
    """The upper clip limits of xyxy boxes in a frame of `height` x `width` pixels."""
    corner = np.array([width, height, width, height], np.float32)
    corner.flags.writeable = False  # shared by every caller
    return corner


def letterbox_transform(
    image_size: tuple[int, int], input_size: tuple[int, int], align: str = "center"
) -> LetterboxTransform:
    """The transform for a frame of `image_size` (height, width) into `input_size` (height, width).

    `align` is "center" (padding split on both sides, Ultralytics) or "top-left" (padding right and
    bottom only, YOLOX).
    """
    (height, width), (net_h, net_w) = image_size, input_size
    if height <= 0 or width <= 0:
        raise ValueError(f"frame of zero size {width}x{height}")
    scale = min(net_h / height, net_w / width)
    # Truncated like YOLOX's reference preprocessing (the independent KITTI figures of EVAL.md are
    # reproduced exactly; Ultralytics rounds instead, at most 1 px apart). The epsilon keeps the
    # limiting side at the full input size despite float error; at least 1 px for extreme aspect ratios.
    new_w = max(1, min(net_w, int(width * scale + 1e-6)))
    new_h = max(1, min(net_h, int(height * scale + 1e-6)))
    if align == "center":
        return LetterboxTransform(scale, (net_w - new_w) // 2, (net_h - new_h) // 2, new_w, new_h)
    if align == "top-left":
        return LetterboxTransform(scale, 0, 0, new_w, new_h)
    raise ValueError(f"letterbox align {align!r}: expected 'center' or 'top-left'")


def resize_into(image: np.ndarray, transform: LetterboxTransform, dst: np.ndarray) -> np.ndarray:
    """Resize `image` to the transform's (height, width) into `dst`, which may be a strided view."""
    resized = cv2.resize(image, (transform.width, transform.height), dst=dst, interpolation=cv2.INTER_LINEAR)
    # OpenCV writes into views whose rows are contiguous; should a build hand back a new array
    # instead, copy it so that `dst` holds the frame either way.
    if resized is not dst:
        dst[...] = resized.reshape(dst.shape)
    return dst


def letterbox(
    image: np.ndarray,
    input_size: tuple[int, int],
    align: str = "center",
    pad_value: int = 114,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize `image` (H, W, C) into an `input_size` canvas filled with `pad_value`.

    `out` (net_h, net_w, C) uint8 is reused when given, so a steady stream of frames allocates nothing.
    """
    transform = letterbox_transform(image.shape[:2], input_size, align)
    net_h, net_w = input_size
    if out is None:
        out = np.empty((net_h, net_w) + image.shape[2:], dtype=image.dtype)
    new_w, new_h, x0, y0 = transform.width, transform.height, transform.pad_x, transform.pad_y
    # Fill only the padding strips; the resized frame overwrites the rest.
    out[:y0] = pad_value
    out[y0 + new_h :] = pad_value
    out[y0 : y0 + new_h, :x0] = pad_value
    out[y0 : y0 + new_h, x0 + new_w :] = pad_value
    resize_into(image, transform, out[y0 : y0 + new_h, x0 : x0 + new_w])
    return out, transform
