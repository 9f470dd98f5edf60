"""LeanDet's input contract, the one definition that data loading, training, evaluation, export
(its manifest), import's `--decoder builtin` default and calibration all follow.

Frames are BGR, letterboxed centred into 192x640 (height, width) with pad value 114, and scaled
by 1/255. Imports no torch: `leaneye-compress import` reads it on machines without PyTorch.
"""

from __future__ import annotations

import numpy as np

from leaneye.engine import MAX_INPUT_SIDE, InputSpec

INPUT_NAME = "images"
INPUT_SIZE = (192, 640)  # height, width: 1224x370 camera frames letterbox to 635x192
COLOR = "bgr"
SCALE = 1 / 255
LETTERBOX_ALIGN = "center"
PAD_VALUE = 114
# MAX_INPUT_SIDE, the runtime manifests' bound on input height and width, also bounds a config's,
# a checkpoint's and `import --input-size`'s: a larger one would only fail later, out of memory.
__all__ = ["MAX_INPUT_SIDE", "input_spec", "network_input"]


def input_spec(input_size: tuple[int, int] = INPUT_SIZE) -> InputSpec:
    """The network input of a LeanDet of `input_size` (height, width), batch 1."""
    height, width = input_size
    return InputSpec(name=INPUT_NAME, shape=(1, 3, int(height), int(width)), color=COLOR, scale=SCALE)


def network_input(images: np.ndarray) -> np.ndarray:
    """Letterboxed uint8 BGR frames (N, H, W, 3) as the network's float32 input (N, 3, H, W)."""
    return np.multiply(images.transpose(0, 3, 1, 2), np.float32(SCALE), dtype=np.float32)
