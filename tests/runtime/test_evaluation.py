"""Accuracy evaluation (leaneye.eval, `leaneye eval`) by the protocols of ../shared/EVAL.md."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from conftest import shared_fixtures_dir
from helpers import jittered, perfect, scenes, write_yolox_nano_engine

from leaneye.cli import eval as eval_cli
from leaneye.cli import run_command
from leaneye.errors import LeanEyeError
from leaneye.eval import (
    GroundTruth,
    ImageDetections,
    ImageTruth,
    coco_ground_truth,
    evaluate,
    kitti_ground_truth,
)
from leaneye.eval.coco import _evaluated, _Resampler

pytestmark = pytest.mark.runtime_core

pytest.importorskip("pycocotools", reason="the 'eval' extra (pycocotools) is not installed")


def with_extra(dets: dict, image_id: int, box, name: str, score: float = 0.99) -> dict:
    out = dict(dets)
    d = out[image_id]
    out[image_id] = ImageDetections(np.vstack([d.boxes, [box]]), np.append(d.scores, score), d.class_names + (name,))
    return out


def test_ground_truth_as_detections_scores_exactly_one():
    gt = scenes(30)
    result = evaluate(gt, perfect(gt), bootstrap=50)
    assert result.map50 == 1.0 and result.map50_95 == 1.0
    assert result.ap50_per_class == {"car": 1.0, "person": 1.0}
    assert result.ap_by_size == {"small": 1.0, "medium": 1.0, "large": 1.0}
    assert result.map50_interval == (1.0, 1.0)
    assert result.num_images == 30
    assert result.num_objects == sum(int((~im.ignore).sum()) for im in gt.images)


def test_jittered_boxes_lose_more_at_strict_iou():
    gt = scenes(30)
    result = evaluate(gt, jittered(gt, 4.0), bootstrap=0)
    assert result.map50 < 1.0 and result.map50_95 < result.map50
    assert (1.0 - result.map50_95) > 2 * (1.0 - result.map50)
    assert result.map50_interval is None
    # Small boxes suffer most from the same pixel error.
    assert result.ap_by_size["small"] < result.ap_by_size["large"]


def test_detection_on_ignore_region_is_neither_hit_nor_false_positive():
    gt = scenes(20)
    dets = jittered(gt, 2.0)
    base = evaluate(gt, dets, bootstrap=0)
    first = gt.images[0]
    own_class_region = int(np.flatnonzero(first.ignore)[0])
    on_ignored_object = with_extra(
        dets, first.image_id, first.boxes[own_class_region], first.class_names[own_class_region]
    )
    on_region_for_all = with_extra(dets, first.image_id, first.ignore_all[0] + [5, 5, -5, -5], "person")
    for extra in (on_ignored_object, on_region_for_all):
        result = evaluate(gt, extra, bootstrap=0)
        assert (result.map50, result.map50_95) == (base.map50, base.map50_95)
    # The same confident box on empty ground is a false positive: the check above can fail.
    off_region = with_extra(dets, first.image_id, [1200.0, 0.0, 1275.0, 100.0], "person")
    assert evaluate(gt, off_region, bootstrap=0).map50 < base.map50


def test_missed_object_lowers_ap_and_unscored_classes_are_dropped():
    gt = scenes(10)
    dets = perfect(gt)
    first = gt.images[0]
    kept = ImageDetections(
        dets[first.image_id].boxes[1:], dets[first.image_id].scores[1:], dets[first.image_id].class_names[1:]
    )
    missed = {**dets, first.image_id: kept}
    assert evaluate(gt, missed, bootstrap=0).map50 < 1.0
    dog = with_extra(dets, first.image_id, [0.0, 0.0, 500.0, 500.0], "dog")
    assert evaluate(gt, dog, bootstrap=0).map50 == 1.0
    # A missing image id is an image without detections; an unknown one is an error.
    assert evaluate(gt, {k: v for k, v in dets.items() if k != first.image_id}, bootstrap=0).map50 < 1.0
    with pytest.raises(LeanEyeError, match="not in the ground truth"):
        evaluate(gt, {**dets, 999: kept}, bootstrap=0)


def test_resampler_matches_pycocotools_including_duplicated_images():
    gt = scenes(12)
    dets = jittered(gt, 3.0)
    resampler = _Resampler(_evaluated(gt, dets, gt.classes, area_ranges=True))
    point = evaluate(gt, dets, bootstrap=0)
    assert resampler.score(np.arange(12)) == pytest.approx((point.map50_95, point.map50), abs=1e-12)
    # A resample with repeats scores like a dataset holding those images twice under fresh ids.
    positions = np.array([0, 0, 3, 5, 5, 5, 7, 11, 11, 2, 2, 9])
    images, duplicated = [], {}
    for new_id, pos in enumerate(positions):
        image = gt.images[pos]  # evaluate() orders images by id; scenes() numbers them in list order
        images.append(
            ImageTruth(
                new_id,
                image.file_name,
                image.width,
                image.height,
                image.boxes,
                image.class_names,
                image.ignore,
                image.ignore_all,
            )
        )
        duplicated[new_id] = dets[image.image_id]
    expected = evaluate(GroundTruth(images, gt.classes), duplicated, bootstrap=0)
    assert resampler.score(positions) == pytest.approx((expected.map50_95, expected.map50), abs=1e-12)


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_images():
    few, many = scenes(15, seed=3), scenes(240, seed=3)
    widths = []
    for gt in (few, many):
        result = evaluate(gt, jittered(gt, 5.0), bootstrap=300, area_ranges=False)
        for value, (low, high) in ((result.map50, result.map50_interval), (result.map50_95, result.map50_95_interval)):
            assert low <= value <= high
        widths.append(result.map50_95_interval[1] - result.map50_95_interval[0])
    assert widths[1] < 0.6 * widths[0]
    again = evaluate(few, jittered(few, 5.0), bootstrap=300, area_ranges=False)
    assert (
        again.map50_95_interval == evaluate(few, jittered(few, 5.0), bootstrap=300, area_ranges=False).map50_95_interval
    )


def test_coco_ground_truth(tmp_path):
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 640, "height": 480},
            {"id": 8, "file_name": "b.png", "width": 640, "height": 480},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "bbox": [10, 20, 100, 50],
                "area": 5000,
                "iscrowd": 0,
                "ignore": 0,
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "bbox": [300, 200, 8, 20],
                "area": 160,
                "iscrowd": 1,
                "ignore": 1,
            },
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 10, "name": "traffic light"}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    gt = coco_ground_truth(path)
    assert gt.classes == ("person", "car", "traffic light")
    first = gt.images[0]
    assert (first.image_id, first.file_name) == (7, "a.png")
    np.testing.assert_array_equal(first.boxes, [[10, 20, 110, 70], [300, 200, 308, 220]])
    assert first.class_names == ("car", "person") and first.ignore.tolist() == [False, True]
    assert len(gt.images[1].boxes) == 0 and gt.num_objects() == 1
    # pycocotools' precision tp / (tp + fp + eps) is 1 - 2e-16 for a single detection.
    assert evaluate(gt, perfect(gt), bootstrap=0).map50 == pytest.approx(1.0, abs=1e-12)
    data["annotations"][0]["image_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(LeanEyeError, match="unknown image ids"):
        coco_ground_truth(path)


def test_kitti_moderate_rule():
    kitti = shared_fixtures_dir() / "kitti_tiny"
    gt = kitti_ground_truth(kitti)
    assert len(gt.images) == 50 and gt.classes == ("car", "person")
    # Recount from the label files: class, truncation, occlusion, alpha, x1, y1, x2, y2.
    rows = [
        line.split()
        for f in sorted((kitti / "label_2").glob("*.txt"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    scored = [r for r in rows if r[0] in ("Car", "Pedestrian")]
    moderate = [r for r in scored if float(r[7]) - float(r[5]) >= 25 and int(r[2]) <= 1 and float(r[1]) <= 0.3]
    assert gt.num_objects() == len(moderate) > 0
    assert sum(int(im.ignore.sum()) for im in gt.images) == len(scored) - len(moderate) > 0
    assert sum(len(im.ignore_all) for im in gt.images) == len(rows) - len(scored) > 0
    # 000000.txt: one Pedestrian, truncation 0, occlusion 0, 164.92 px tall: a person to find.
    first = gt.images[0]
    assert first.file_name == "000000.jpeg" and first.class_names == ("person",) and first.ignore.tolist() == [False]
    np.testing.assert_allclose(first.boxes[0], [712.40, 143.00, 810.73, 307.92])
    assert (first.width, first.height) == (1224, 370)


def run_eval_cli(argv: list) -> int:
    parser = argparse.ArgumentParser(prog="leaneye")
    eval_cli.register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, argv)


@pytest.mark.slow
def test_eval_cli_on_kitti_with_yolox(tmp_path, capsys):
    pytest.importorskip("onnxruntime")

    fixtures = shared_fixtures_dir()
    engine = tmp_path / "yolox_nano"
    write_yolox_nano_engine(engine, fixtures)
    out = tmp_path / "eval.json"
    assert (
        run_eval_cli(
            [
                "eval",
                "--engine",
                str(engine),
                "--kitti",
                str(fixtures / "kitti_tiny"),
                "--bootstrap",
                "100",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["images"] == 50 and report["objects"] == kitti_ground_truth(fixtures / "kitti_tiny").num_objects()
    # EVAL.md's independent reference for this model: mAP50 0.61 (0.51-0.71) over these 50 images.
    assert 0.5 < report["mAP50"] < 0.72 and report["mAP50-95"] < report["mAP50"]
    low, high = report["mAP50_interval95"]
    assert low <= report["mAP50"] <= high
    assert "mAP50-95" in capsys.readouterr().out
    # Refuses to overwrite, and a scenes folder without annotations is a one-line error.
    assert (
        run_eval_cli(["eval", "--engine", str(engine), "--kitti", str(fixtures / "kitti_tiny"), "--json", str(out)])
        == 2
    )
    assert run_eval_cli(["eval", "--engine", str(engine), "--scenes", str(tmp_path)]) == 2
    assert "annotations.json" in capsys.readouterr().err
