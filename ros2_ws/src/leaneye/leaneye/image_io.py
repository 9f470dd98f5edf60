"""Image files and encoded frames: which suffixes are images, reading and decoding them, one-line
errors for bad files. Every decode of the runtime (image folders, datasets, CompressedImage) runs here."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import LeanEyeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# OpenCV's own default limit (CV_IO_MAX_IMAGE_PIXELS): OpenCV 5 raises above it, OpenCV 4 returns None.
MAX_IMAGE_PIXELS = 1 << 30
_OPENCV_LOG_ERROR = 2  # cv::utils::logging::LOG_LEVEL_ERROR: errors only, no warnings
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; not DHT, JPG, DAC


def is_image_file(path: Path) -> bool:
    """A regular file (not a FIFO or device, which would block or never end) with an image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(folder: Path) -> list[Path]:
    """The images of `folder`, sorted by name; none is an error naming the folder."""
    found = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not found:
        raise LeanEyeError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    return found


def _not_a_regular_file(path: Path) -> LeanEyeError:
    return LeanEyeError(f"{path}: not a regular file (a FIFO or device?); expected an image file")


def image_paths(sources: list[Path]) -> list[Path]:
    """Image files named directly, plus the images in named directories (sorted by name)."""
    paths = []
    for source in sources:
        if source.is_dir():
            paths.extend(image_files(source))
        elif source.is_file():
            paths.append(source)
        elif source.exists():
            raise _not_a_regular_file(source)
        else:
            raise LeanEyeError(f"{source}: no such image file or directory")
    return paths


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or BMP header without decoding; None if not found there."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)  # a negative height means top-down rows
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 <= len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            if marker in _JPEG_SOF_MARKERS:
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return width, height
            pos += 2 + length
    return None


def _opencv_log_level():
    """OpenCV's (get, set) of its log level: cv2.utils.logging in OpenCV 5, cv2 itself in OpenCV 4."""
    import cv2

    logging = getattr(cv2.utils, "logging", None)
    return (logging.getLogLevel, logging.setLogLevel) if logging else (cv2.getLogLevel, cv2.setLogLevel)


def decode_image(data: bytes | np.ndarray, source: str | Path) -> np.ndarray:
    """BGR uint8 pixels of an encoded image; `source` (a file, a bag frame) names it in errors."""
    import cv2

    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buffer.size == 0:
        raise LeanEyeError(f"{source}: no bytes; expected an image ({', '.join(IMAGE_SUFFIXES)})")
    size = header_size(buffer[:65536].tobytes())
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise LeanEyeError(f"{source}: header claims {size[0]}x{size[1]} pixels, over the {MAX_IMAGE_PIXELS} limit")
    get_level, set_level = _opencv_log_level()
    level = get_level()
    # OpenCV's own "[ WARN ]" lines about a bad file would only repeat the error raised below.
    set_level(_OPENCV_LOG_ERROR)
    try:
        frame = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV 5 raises where OpenCV 4 returns None (and both raise for some formats)
        raise LeanEyeError(f"{source}: not a readable image (OpenCV: {exc.err})") from None
    finally:
        set_level(level)
    if frame is None:
        raise LeanEyeError(f"{source}: not a readable image")
    return frame


def read_image(path: Path) -> tuple[bytes, np.ndarray]:
    """The file's bytes (the compressed frame) and the decoded BGR frame."""
    if path.exists() and not path.is_file():
        raise _not_a_regular_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LeanEyeError(f"{path}: cannot read ({exc.strerror})") from None
    if not data:
        raise LeanEyeError(f"{path}: empty file; expected an image ({', '.join(IMAGE_SUFFIXES)})")
    return data, decode_image(data, path)
