"""A real external detector through the whole runtime: YOLOX-Nano (Megvii's ONNX export) imported with
`leaneye-compress import`, run by the Detector on 50 real KITTI images and scored by EVAL.md's KITTI
protocol. An independent script measures mAP50 0.610 and mAP50-95 0.293 on the same images."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch_free

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

from leaneye.cli.eval import detect_all  # noqa: E402
from leaneye.detector import Detector  # noqa: E402
from leaneye.eval import (  # noqa: E402
    EVAL_PROTOCOL,  # noqa: E402
    evaluate,
    kitti_ground_truth,
)


@pytest.mark.slow
def test_yolox_nano_on_kitti_reaches_the_reference_accuracy(shared_fixtures, yolox_engine):
    fixtures = shared_fixtures
    ground_truth = kitti_ground_truth(fixtures / "kitti_tiny")
    with Detector.from_engine(yolox_engine, threads=2, **EVAL_PROTOCOL.detector_settings()) as detector:
        assert detector.manifest.input.color == "bgr" and detector.manifest.letterbox_align == "top-left"
        detections = detect_all(detector, ground_truth, fixtures / "kitti_tiny" / "image_2")
    # COCO's "car" and "person" are the scored classes by name; other COCO classes are dropped.
    result = evaluate(ground_truth, detections, bootstrap=0)
    assert len(detections) == 50
    assert result.map50 >= 0.59 and result.map50_95 >= 0.28, result.format()
    # The same protocol on the same model and images: EVAL.md expects agreement within about 0.01.
    assert abs(result.map50 - 0.610) <= 0.01 and abs(result.map50_95 - 0.293) <= 0.01, result.format()
