"""Image files: which suffixes are images, reading and decoding them, one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import LeanEyeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_paths(sources: list[Path]) -> list[Path]:
    """Image files named directly, plus the images in named directories (sorted by name)."""
    paths = []
    for source in sources:
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise LeanEyeError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
            paths.extend(found)
        elif source.is_file():
            paths.append(source)
        else:
            raise LeanEyeError(f"{source}: no such image file or directory")
    return paths


def decode_image(data: bytes, path: Path) -> np.ndarray:
    import cv2

    if not data:
        raise LeanEyeError(f"{path}: empty file; expected an image ({', '.join(IMAGE_SUFFIXES)})")
    frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise LeanEyeError(f"{path}: not a readable image")
    return frame


def read_image(path: Path) -> tuple[bytes, np.ndarray]:
    """The file's bytes (the compressed frame) and the decoded BGR frame."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LeanEyeError(f"{path}: cannot read ({exc.strerror})") from None
    return data, decode_image(data, path)
