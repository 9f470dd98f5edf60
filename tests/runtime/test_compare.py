"""Comparing two models on the same frames (leaneye.eval.compare): the paired bootstrap of the mAP
difference, agreement between two models' detections, and the IoU matrix both rest on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import jittered, perfect, scenes

from leaneye.eval import ImageDetections, agreement, box_iou, evaluate, paired_difference

pytestmark = pytest.mark.runtime_core

pytest.importorskip("pycocotools", reason="the 'eval' extra (pycocotools) is not installed")


def test_box_iou_matrix():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 0, 0]], np.float64)
    # Identical, half overlapping (50 / 150), disjoint; a zero-area box has IoU 0, not NaN.
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0], [0.0, 0.0, 0.0]])
    assert box_iou(a, np.zeros((0, 4))).shape == (2, 0)


def test_paired_difference():
    gt = scenes(40)
    good, worse = jittered(gt, 2.0), jittered(gt, 6.0)
    same = paired_difference(gt, good, good, bootstrap=200)
    assert same.difference == {"mAP50-95": 0.0, "mAP50": 0.0}
    assert same.interval == {"mAP50-95": (0.0, 0.0), "mAP50": (0.0, 0.0)}
    loss = paired_difference(gt, good, worse, bootstrap=200)
    assert loss.reference["mAP50-95"] == pytest.approx(evaluate(gt, good, bootstrap=0).map50_95, abs=1e-12)
    low, high = loss.interval["mAP50-95"]
    assert low <= loss.difference["mAP50-95"] <= high < 0
    json.dumps(loss.to_dict())
    assert "mAP50-95" in loss.format()


def test_agreement():
    gt = scenes(20)
    dets = perfect(gt)
    same = agreement(dets, dets)
    assert same.mean_f1 == 1.0 and same.mean_iou == pytest.approx(1.0)
    assert all(s["f1"] == 1.0 for s in same.per_class.values())
    # Every candidate box shifted by a quarter of its width: IoU 0.75 / 1.25 = 0.6, all still matched.
    shifted = {}
    for k, d in dets.items():
        dx = (d.boxes[:, 2] - d.boxes[:, 0]) / 4
        shifted[k] = ImageDetections(d.boxes + np.stack([dx, 0 * dx, dx, 0 * dx], axis=1), d.scores, d.class_names)
    moved = agreement(dets, shifted)
    assert moved.mean_f1 == 1.0 and moved.mean_iou == pytest.approx(0.6)
    # Below the score threshold a reference box does not count; the candidate's box is then unmatched.
    first = gt.images[0].image_id
    quiet = {**dets, first: ImageDetections(dets[first].boxes, np.full(len(dets[first]), 0.1), dets[first].class_names)}
    partial = agreement(quiet, dets)
    total = sum(len(d) for d in dets.values())
    assert sum(s["matched"] for s in partial.per_class.values()) == total - len(dets[first])
    assert partial.mean_f1 < 1.0
    json.dumps(partial.to_dict())
