"""Output decoders: a detector's raw outputs to candidate boxes, before NMS.

Each decoder turns `outputs` (the backend's list of arrays, batch 1) into
`(boxes_xyxy, scores, class_ids)`: float32 (K, 4) boxes in NETWORK-INPUT pixels, float32 (K,)
scores and int64 (K,) class ids, keeping only candidates with score >= `score_threshold`. The
threshold is applied as early as possible so that the rest of the work (box arithmetic, NMS)
only sees the few boxes that can matter.

Layouts (N candidates, nc classes):

- "builtin": the project's own model, `[1, N, 4 + nc]`: x1, y1, x2, y2 then class
  probabilities (decoded in the graph, no objectness). score = max class probability.
- "yolox": Megvii YOLOX raw grid `[1, N, 5 + nc]`, per cell dx, dy, log_w, log_h, objectness,
  class scores (sigmoided), cells at `strides` over the input (row-major, finest first).
  xy = (dxdy + cell) * stride, wh = exp(log_wh) * stride, score = objectness * class score.
- "ultralytics": YOLOv8 / YOLO11 `[1, 4 + nc, N]`: cx, cy, w, h then class scores.
- "end2end": `[1, K, 6]`: x1, y1, x2, y2, score, class (YOLOv10, YOLO26, exports with
  nms=True). Already suppressed: no NMS afterwards.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import LeanEyeError

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DecodeParams:
    input_size: tuple[int, int]  # network input (height, width)
    num_classes: int
    score_threshold: float = 0.25
    strides: tuple[int, ...] = (8, 16, 32)  # yolox only


@dataclass(frozen=True)
class Decoder:
    decode: Callable[[list, DecodeParams], Candidates]
    runs_nms: bool  # False when the model already suppressed overlapping boxes
    param_names: frozenset  # decoder parameters an engine manifest may set


def _single_output(outputs: list, name: str, layout: str, ndim: int = 3) -> np.ndarray:
    if not outputs:
        raise LeanEyeError(f"decoder {name!r}: the model has no outputs; expected {layout}")
    out = outputs[0]
    if out.ndim != ndim or out.shape[0] != 1:
        raise LeanEyeError(f"decoder {name!r}: model output has shape {list(out.shape)}; expected {layout}")
    return out[0]


def _check_classes(name: str, found: int, params: DecodeParams, layout: str) -> None:
    if found != params.num_classes:
        raise LeanEyeError(f"decoder {name!r}: model output has {found} classes but the engine names "
                           f"{params.num_classes}; expected {layout}")


def _best_class(class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    class_ids = class_scores.argmax(axis=1)
    return class_scores[np.arange(len(class_ids)), class_ids], class_ids


def _empty() -> Candidates:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def _result(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Candidates:
    return (np.ascontiguousarray(boxes, dtype=np.float32), np.asarray(scores, dtype=np.float32),
            np.asarray(class_ids, dtype=np.int64))


def decode_builtin(outputs: list, params: DecodeParams) -> Candidates:
    layout = "[1, N, 4 + classes] (x1, y1, x2, y2, class probabilities)"
    out = _single_output(outputs, "builtin", layout)
    _check_classes("builtin", out.shape[1] - 4, params, layout)
    class_scores = out[:, 4:]
    keep = np.flatnonzero(class_scores.max(axis=1) >= params.score_threshold)
    if not len(keep):
        return _empty()
    scores, class_ids = _best_class(class_scores[keep])
    return _result(out[keep, :4], scores, class_ids)


@functools.lru_cache(maxsize=8)
def yolox_grid(input_size: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cell corners (N, 2) as x, y in cells and each cell's stride (N, 1), in YOLOX's output order."""
    height, width = input_size
    cells, cell_strides = [], []
    for stride in strides:
        ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        cell_strides.append(np.full((xs.size, 1), stride))
    return (np.concatenate(cells).astype(np.float32), np.concatenate(cell_strides).astype(np.float32))


@functools.lru_cache(maxsize=8)
def _yolox_cell_table(input_size: tuple[int, int], strides: tuple[int, ...]) -> np.ndarray:
    """(N, 4) float32 rows of cell x, cell y, stride, stride / 2: what decoding a cell needs, in one gather."""
    cells, cell_strides = yolox_grid(input_size, strides)
    return np.concatenate([cells, cell_strides, cell_strides * 0.5], axis=1)


def decode_yolox(outputs: list, params: DecodeParams) -> Candidates:
    layout = "[1, N, 5 + classes] (dx, dy, log_w, log_h, objectness, class scores)"
    out = _single_output(outputs, "yolox", layout)
    _check_classes("yolox", out.shape[1] - 5, params, layout)
    table = _yolox_cell_table(tuple(params.input_size), tuple(params.strides))
    if len(table) != len(out):
        raise LeanEyeError(f"decoder 'yolox': model output has {len(out)} cells but strides {list(params.strides)} over a "
                           f"{params.input_size[1]}x{params.input_size[0]} input give {len(table)}")
    # Class scores are at most 1, so objectness alone bounds the score: only the objectness column
    # of the whole output is read, then only the rows of the few cells above the threshold. Each
    # NumPy call costs microseconds however small its arrays, so there are few of them.
    candidates = (out[:, 4] >= params.score_threshold).nonzero()[0]
    if not len(candidates):
        return _empty()
    rows = out.take(candidates, axis=0)
    scores = rows[:, 5:].max(axis=1) * rows[:, 4]
    passed = (scores >= params.score_threshold).nonzero()[0]
    if len(passed) < len(rows):
        rows, candidates, scores = rows.take(passed, axis=0), candidates.take(passed), scores.take(passed)
    cells = table.take(candidates, axis=0)
    centres = (rows[:, :2] + cells[:, :2]) * cells[:, 2:3]
    half = np.exp(rows[:, 2:4]) * cells[:, 3:]
    boxes = np.empty((len(rows), 4), np.float32)
    np.subtract(centres, half, out=boxes[:, :2])
    np.add(centres, half, out=boxes[:, 2:])
    return _result(boxes, scores, rows[:, 5:].argmax(axis=1))


def decode_ultralytics(outputs: list, params: DecodeParams) -> Candidates:
    layout = "[1, 4 + classes, N] (cx, cy, w, h, class scores)"
    out = _single_output(outputs, "ultralytics", layout)
    _check_classes("ultralytics", out.shape[0] - 4, params, layout)
    # Max over the class axis of the (classes, N) block reads memory in order: cheaper than transposing first.
    keep = np.flatnonzero(out[4:].max(axis=0) >= params.score_threshold)
    if not len(keep):
        return _empty()
    selected = out[:, keep].T
    scores, class_ids = _best_class(selected[:, 4:])
    half = selected[:, 2:4] / 2
    return _result(np.concatenate([selected[:, :2] - half, selected[:, :2] + half], axis=1), scores, class_ids)


def decode_end2end(outputs: list, params: DecodeParams) -> Candidates:
    layout = "[1, K, 6] (x1, y1, x2, y2, score, class)"
    out = _single_output(outputs, "end2end", layout)
    if out.shape[1] != 6:
        raise LeanEyeError(f"decoder 'end2end': model output has shape {[1] + list(out.shape)}; expected {layout}")
    keep = out[:, 4] >= params.score_threshold
    class_ids = out[keep, 5].astype(np.int64)
    if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= params.num_classes):
        raise LeanEyeError(f"decoder 'end2end': model output class {int(class_ids.max())} is outside the engine's "
                           f"{params.num_classes} class names")
    return _result(out[keep, :4], out[keep, 4], class_ids)


DECODERS = {
    "builtin": Decoder(decode_builtin, runs_nms=True, param_names=frozenset()),
    "yolox": Decoder(decode_yolox, runs_nms=True, param_names=frozenset({"strides"})),
    "ultralytics": Decoder(decode_ultralytics, runs_nms=True, param_names=frozenset()),
    "end2end": Decoder(decode_end2end, runs_nms=False, param_names=frozenset()),
}
