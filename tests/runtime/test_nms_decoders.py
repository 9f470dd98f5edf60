"""NMS against a brute-force reference, and each output decoder on outputs with known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from leaneye.vision.nms import nms

pytestmark = pytest.mark.runtime_core


def reference_nms(boxes, scores, class_ids, iou_threshold, class_agnostic, max_detections):
    """Textbook greedy NMS, one pair at a time, in plain Python."""

    def iou(a, b):
        inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = inter_w * inter_h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    suppressed = set()
    keep = []
    for rank, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[rank + 1 :]:
            if (class_agnostic or class_ids[i] == class_ids[j]) and iou(boxes[i], boxes[j]) > iou_threshold:
                suppressed.add(j)
    return keep[:max_detections]


def random_boxes(rng, count, extent=200.0):
    xy = rng.uniform(0, extent, size=(count, 2))
    wh = rng.uniform(1, extent / 3, size=(count, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("class_agnostic", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_brute_force(seed, class_agnostic):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 400))
    boxes = random_boxes(rng, count)
    # Few distinct score values so that ties (kept in input order) are exercised too.
    scores = rng.integers(0, 50, size=count).astype(np.float32) / 50
    class_ids = rng.integers(0, 4, size=count)
    iou_threshold = float(rng.uniform(0.2, 0.8))
    max_detections = int(rng.integers(1, 120))
    expected = reference_nms(
        boxes.tolist(), scores.tolist(), class_ids.tolist(), iou_threshold, class_agnostic, max_detections
    )
    kept = nms(boxes, scores, class_ids, iou_threshold, class_agnostic=class_agnostic, max_detections=max_detections)
    assert kept.tolist() == expected


def test_nms_class_aware_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    class_ids = np.array([0, 1, 0])
    assert nms(boxes, scores, class_ids, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, class_ids, 0.5, class_agnostic=True).tolist() == [0]


def test_nms_keeps_classes_apart_beyond_the_top_left_corner():
    # Shifting class 1 by (largest coordinate + 1) would land this box, which lies beyond the
    # frame's top-left corner, exactly on the class-0 box: the offsets must use the full extent.
    boxes = np.array([[90, 90, 100, 100], [-11, -11, -1, -1]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, np.array([0, 1]), 0.5).tolist() == [0, 1]
    assert nms(boxes + [[0, 0, 0, 0], [101, 101, 101, 101]], scores, np.array([0, 0]), 0.5).tolist() == [0]


def test_nms_empty_and_mismatched():
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5)
    assert empty.shape == (0,)
    with pytest.raises(ValueError):
        nms(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros(2, np.int64), 0.5)


# --- decoders: outputs built by hand with known boxes ---------------------------------------

from leaneye.errors import LeanEyeError  # noqa: E402
from leaneye.vision.decoders import DECODERS, DecodeParams, yolox_grid  # noqa: E402


def decode(name, output, input_size=(64, 96), num_classes=3, score_threshold=0.3):
    params = DecodeParams(input_size=input_size, num_classes=num_classes, score_threshold=score_threshold)
    return DECODERS[name].build(params)([output])


def test_builtin_decoder_keeps_best_class_above_threshold():
    out = np.zeros((1, 4, 4 + 3), np.float32)
    out[0, :, :4] = [[1, 2, 11, 12], [5, 5, 9, 9], [0, 0, 50, 40], [3, 3, 4, 4]]
    out[0, 0, 4:] = [0.1, 0.9, 0.2]
    out[0, 1, 4:] = [0.2, 0.1, 0.25]  # below threshold
    out[0, 2, 4:] = [0.5, 0.0, 0.7]
    boxes, scores, class_ids = decode("builtin", out)
    np.testing.assert_allclose(boxes, [[1, 2, 11, 12], [0, 0, 50, 40]])
    np.testing.assert_allclose(scores, [0.9, 0.7])
    assert class_ids.tolist() == [1, 2] and boxes.dtype == np.float32 and class_ids.dtype == np.int64


def test_yolox_decoder_places_cells_on_a_rectangular_grid():
    input_size = (64, 96)  # height != width: 8x12 + 4x6 + 2x3 cells
    cells, strides = yolox_grid(input_size, (8, 16, 32))
    assert len(cells) == 96 + 24 + 6
    out = np.zeros((1, len(cells), 5 + 3), np.float32)
    # Cell (x=5, y=2) at stride 8: row-major, so index 2 * 12 + 5.
    index = 2 * 12 + 5
    out[0, index, :5] = [0.5, 0.25, np.log(2.0), np.log(4.0), 0.8]
    out[0, index, 5:] = [0.1, 0.0, 0.5]
    # Cell (x=1, y=1) at stride 32 (after 96 + 24): objectness high but product below threshold.
    out[0, 96 + 24 + 3 + 1, 4:6] = [0.9, 0.3]
    boxes, scores, class_ids = decode("yolox", out, input_size)
    centre_x, centre_y = (5 + 0.5) * 8, (2 + 0.25) * 8
    np.testing.assert_allclose(boxes, [[centre_x - 8, centre_y - 16, centre_x + 8, centre_y + 16]], rtol=1e-6)
    np.testing.assert_allclose(scores, [0.4], rtol=1e-6)
    assert class_ids.tolist() == [2]


def test_ultralytics_decoder_reads_channels_first_centre_size():
    out = np.zeros((1, 4 + 3, 5), np.float32)
    out[0, :4, 1] = [20, 30, 10, 6]
    out[0, 4:, 1] = [0.0, 0.0, 0.95]
    out[0, 4:, 3] = [0.29, 0.1, 0.0]
    boxes, scores, class_ids = decode("ultralytics", out)
    np.testing.assert_allclose(boxes, [[15, 27, 25, 33]])
    np.testing.assert_allclose(scores, [0.95])
    assert class_ids.tolist() == [2]


def test_end2end_decoder_filters_by_score_and_skips_nms():
    out = np.array([[[1, 2, 3, 4, 0.9, 2], [0, 0, 5, 5, 0.1, 0], [1, 2, 3, 4, 0.8, 1]]], np.float32)
    boxes, scores, class_ids = decode("end2end", out)
    np.testing.assert_allclose(boxes, [[1, 2, 3, 4], [1, 2, 3, 4]])
    assert class_ids.tolist() == [2, 1] and not DECODERS["end2end"].runs_nms


@pytest.mark.parametrize(
    "name, shape",
    [
        ("builtin", (1, 10, 4 + 5)),  # 5 classes, engine names 3
        ("yolox", (1, 100, 5 + 3)),  # wrong cell count for the grid
        ("ultralytics", (1, 10, 4 + 3)),  # wrong rank
        ("end2end", (1, 10, 7)),
    ],
)
def test_decoders_reject_outputs_of_another_layout(name, shape):
    with pytest.raises(LeanEyeError, match=name):
        decode(name, np.zeros(shape, np.float32))
