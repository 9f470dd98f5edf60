"""Output decoders: a detector's raw outputs to candidate boxes, before NMS.

A decoder is built once per engine (`DECODERS[name].build(params)`: grids, thresholds, expected
shapes) and then turns `outputs` (the backend's list of arrays, batch 1) into
`(boxes_xyxy, scores, class_ids)` every frame: float32 (K, 4) boxes in NETWORK-INPUT pixels,
float32 (K,) scores and int64 (K,) class ids, keeping only candidates with score >=
`score_threshold`. The threshold is applied as early as possible so that the rest of the work
(box arithmetic, NMS) only sees the few boxes that can matter.

Right after inference the CPU's caches hold the network, not this code: every NumPy call, and
every Python call, then costs microseconds however small its arrays. So the per-frame functions
are straight-line code over what `build` prepared, with few calls and the same few ufuncs.

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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import LeanEyeError

Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]
DecodeFn = Callable[[list], Candidates]


@dataclass(frozen=True)
class DecodeParams:
    input_size: tuple[int, int]  # network input (height, width)
    num_classes: int
    score_threshold: float = 0.25
    strides: tuple[int, ...] = (8, 16, 32)  # yolox only


@dataclass(frozen=True)
class Decoder:
    build: Callable[[DecodeParams], DecodeFn]  # once per engine; the function it returns runs per frame
    runs_nms: bool  # False when the model already suppressed overlapping boxes
    param_names: frozenset  # decoder parameters an engine manifest may set


def _single_output(outputs: list, name: str, layout: str, ndim: int = 3) -> np.ndarray:
    """The model's first output without its batch axis, as float32 (half-precision models give float16)."""
    if not outputs:
        raise LeanEyeError(f"decoder {name!r}: the model has no outputs; expected {layout}")
    out = outputs[0]
    if out.ndim != ndim or out.shape[0] != 1:
        raise LeanEyeError(f"decoder {name!r}: model output has shape {list(out.shape)}; expected {layout}")
    return out[0] if out.dtype == np.float32 else out[0].astype(np.float32)


def _check_classes(name: str, found: int, params: DecodeParams, layout: str) -> None:
    if found != params.num_classes:
        raise LeanEyeError(
            f"decoder {name!r}: model output has {found} classes but the engine names "
            f"{params.num_classes}; expected {layout}"
        )


def _threshold(params: DecodeParams) -> np.float32:
    """The score threshold in the outputs' float32: compared without NumPy's promotion rules every frame."""
    return np.float32(params.score_threshold)


def _best_class(rows: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, class id) of the best class of each row of the C-contiguous (K, first + classes) `rows`.

    The scores are gathered from the flat rows with `take`: fancy indexing or a second reduction
    (`max` beside `argmax`) cost several times more right after inference.
    """
    class_ids = rows[:, first:].argmax(axis=1)
    width = rows.shape[1]
    return rows.take(class_ids + np.arange(first, first + width * len(rows), width)), class_ids


def _empty() -> Candidates:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def builtin_decoder(params: DecodeParams) -> DecodeFn:
    layout = "[1, N, 4 + classes] (x1, y1, x2, y2, class probabilities)"
    threshold = _threshold(params)

    def decode_builtin(outputs: list) -> Candidates:
        out = _single_output(outputs, "builtin", layout)
        _check_classes("builtin", out.shape[1] - 4, params, layout)
        keep = (np.maximum.reduce(out[:, 4:], axis=1) >= threshold).nonzero()[0]
        if not len(keep):
            return _empty()
        rows = out.take(keep, axis=0)
        scores, class_ids = _best_class(rows, 4)
        return rows[:, :4], scores, class_ids

    return decode_builtin


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


def yolox_decoder(params: DecodeParams) -> DecodeFn:
    layout = "[1, N, 5 + classes] (dx, dy, log_w, log_h, objectness, class scores)"
    cells, cell_strides = yolox_grid(tuple(params.input_size), tuple(params.strides))
    # Per cell: x, y, stride, stride / 2 -- what decoding a cell needs, in one gather.
    table = np.concatenate([cells, cell_strides, cell_strides * 0.5], axis=1)
    # Per candidate row of `width` values: where its class scores start in the flat rows.
    width = 5 + params.num_classes
    class_starts = np.arange(5, 5 + width * len(table), width)
    threshold = _threshold(params)

    def decode_yolox(outputs: list) -> Candidates:
        out = _single_output(outputs, "yolox", layout)
        if out.shape != (len(table), width):
            _check_classes("yolox", out.shape[1] - 5, params, layout)
            raise LeanEyeError(
                f"decoder 'yolox': model output has {len(out)} cells but strides {list(params.strides)} "
                f"over a {params.input_size[1]}x{params.input_size[0]} input give {len(table)}"
            )
        # Class scores are at most 1, so objectness alone bounds the score: only the objectness column
        # of the whole output is read, then only the rows of the few cells above the threshold.
        candidates = (out[:, 4] >= threshold).nonzero()[0]
        if not len(candidates):
            return _empty()
        rows = out.take(candidates, axis=0)
        class_ids = rows[:, 5:].argmax(axis=1)
        scores = rows.take(class_ids + class_starts[: len(rows)])
        scores *= rows[:, 4]
        passed = (scores >= threshold).nonzero()[0]
        if len(passed) < len(rows):
            rows, candidates, scores, class_ids = (
                rows.take(passed, axis=0),
                candidates.take(passed),
                scores.take(passed),
                class_ids.take(passed),
            )
        cell = table.take(candidates, axis=0)
        centres = rows[:, :2] + cell[:, :2]
        centres *= cell[:, 2:3]
        half = np.exp(rows[:, 2:4])
        half *= cell[:, 3:]
        boxes = np.empty((len(rows), 4), np.float32)
        np.subtract(centres, half, out=boxes[:, :2])
        np.add(centres, half, out=boxes[:, 2:])
        return boxes, scores, class_ids

    return decode_yolox


def ultralytics_decoder(params: DecodeParams) -> DecodeFn:
    layout = "[1, 4 + classes, N] (cx, cy, w, h, class scores)"
    threshold = _threshold(params)

    def decode_ultralytics(outputs: list) -> Candidates:
        out = _single_output(outputs, "ultralytics", layout)
        _check_classes("ultralytics", out.shape[0] - 4, params, layout)
        # The maximum over the class axis of the (classes, N) block reads memory in order: cheaper than transposing first.
        keep = (np.maximum.reduce(out[4:], axis=0) >= threshold).nonzero()[0]
        if not len(keep):
            return _empty()
        rows = np.ascontiguousarray(out.take(keep, axis=1).T)
        scores, class_ids = _best_class(rows, 4)
        half = rows[:, 2:4] * 0.5
        boxes = np.empty((len(rows), 4), np.float32)
        np.subtract(rows[:, :2], half, out=boxes[:, :2])
        np.add(rows[:, :2], half, out=boxes[:, 2:])
        return boxes, scores, class_ids

    return decode_ultralytics


def end2end_decoder(params: DecodeParams) -> DecodeFn:
    layout = "[1, K, 6] (x1, y1, x2, y2, score, class)"
    threshold = _threshold(params)

    def decode_end2end(outputs: list) -> Candidates:
        out = _single_output(outputs, "end2end", layout)
        if out.shape[1] != 6:
            raise LeanEyeError(f"decoder 'end2end': model output has shape {[1] + list(out.shape)}; expected {layout}")
        rows = out.take((out[:, 4] >= threshold).nonzero()[0], axis=0)
        class_ids = rows[:, 5].astype(np.int64)
        if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= params.num_classes):
            raise LeanEyeError(
                f"decoder 'end2end': model output class {int(class_ids.max())} is outside the engine's "
                f"{params.num_classes} class names"
            )
        return rows[:, :4], rows[:, 4], class_ids

    return decode_end2end


DECODERS = {
    "builtin": Decoder(builtin_decoder, runs_nms=True, param_names=frozenset()),
    "yolox": Decoder(yolox_decoder, runs_nms=True, param_names=frozenset({"strides"})),
    "ultralytics": Decoder(ultralytics_decoder, runs_nms=True, param_names=frozenset()),
    "end2end": Decoder(end2end_decoder, runs_nms=False, param_names=frozenset()),
}
