"""The frame pipeline: Detector = preprocess + backend + postprocess, FrameProcessor's messages from
a type provider, the one check of detection settings, and models whose outputs are NaN.

Engines are tiny real ONNX models (tests/helpers.py) run by ONNX Runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import builtin_rows, nan_on_lit_frames_nodes, write_builtin_engine

from leaneye import msgs
from leaneye.cli import main as leaneye_main
from leaneye.detector import Detector
from leaneye.errors import LeanEyeError
from leaneye.eval.protocol import EVAL_PROTOCOL
from leaneye.pipeline import FrameProcessor
from leaneye.replay import ReplayOptions
from leaneye.vision.postprocess import DetectionSettings, Postprocessor

pytestmark = pytest.mark.runtime_core

# In network pixels (96 x 320 input): boxes 1-3 overlap box 0 with IoU 0.82, 0.6 and 0.43, box 3
# overlaps box 2 with IoU 0.74; the last scores between EVAL.md's 0.001 and the default 0.25.
EMITTED = [
    ([20, 20, 60, 60], 0, 0.9),
    ([24, 20, 64, 60], 0, 0.8),
    ([30, 20, 70, 60], 0, 0.7),
    ([36, 20, 76, 60], 0, 0.6),
    ([150, 30, 200, 80], 3, 0.5),
    ([250, 10, 300, 40], 1, 0.1),
]
STAMP = 1_700_000_000_123_456_789


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return write_builtin_engine(tmp_path_factory.mktemp("engine") / "engine", builtin_rows(EMITTED))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (192, 640, 3), dtype=np.uint8)


def _published(message) -> list:
    boxes, scores, class_ids, _ = msgs.boxes_from_detection_array(message)
    return [(box, class_id, score) for box, class_id, score in zip(boxes.round(2).tolist(), class_ids, scores.tolist())]


def test_messages_hold_the_detections_and_latency_covers_building_them(engine, frame):
    with Detector.from_engine(engine, conf=0.25, iou=0.45) as detector:
        processor = FrameProcessor(detector, msgs.bag_types(), class_id="name")
        header = msgs.header(STAMP, "cam")
        processed = processor.process(frame, header, decode_ms=1.5)
    found = processed.published
    # At IoU 0.45 box 0 suppresses boxes 1 and 2 but not 3; the frame is the input scaled by 2.
    assert found.scores.tolist() == pytest.approx([0.9, 0.6, 0.5])
    assert found.boxes.tolist() == [[40, 40, 120, 120], [72, 40, 152, 120], [300, 60, 400, 160]]
    assert _published(processed.message) == [
        (box, name, pytest.approx(score)) for box, name, score in zip(found.boxes.tolist(), found.names, found.scores)
    ]
    assert processed.message.header is header and processed.scored is None
    latency = processed.latency
    assert latency.decode_ms == 1.5 and latency.num_detections == 3
    stages = latency.decode_ms + latency.preprocess_ms + latency.inference_ms + latency.postprocess_ms
    assert latency.total_ms >= stages  # and building the Detection2DArray
    info = processor.label_info(header)
    assert info.threshold == 0.25 and msgs.class_names_from_label_info(info)[3] == detector.class_names[3]


def test_scoring_postprocesses_the_same_outputs_and_leaves_the_published_alone(engine, frame):
    protocol = DetectionSettings(**EVAL_PROTOCOL.detector_settings())
    header = msgs.header(STAMP, "cam")
    with Detector.from_engine(engine, conf=0.3, iou=0.7, max_detections=2) as detector:
        plain = FrameProcessor(detector, msgs.bag_types()).process(frame, header)
        scoring = FrameProcessor(detector, msgs.bag_types(), scoring=Postprocessor(detector.manifest, protocol))
        both = scoring.process(frame, header)
    with Detector.from_engine(engine, **EVAL_PROTOCOL.detector_settings()) as at_protocol:
        reference = at_protocol.detect(frame)
    assert _published(both.message) == _published(plain.message)
    assert both.published.scores.tolist() == pytest.approx([0.9, 0.7])  # IoU 0.7: only box 1 goes; cap 2
    assert both.latency.num_detections == 2
    np.testing.assert_array_equal(both.scored.boxes, reference.boxes)
    np.testing.assert_array_equal(both.scored.scores, reference.scores)
    assert len(both.scored) == 4 and set(both.scored.timings) == {"postprocess"}  # IoU 0.65: boxes 1 and 3 go


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"conf": -0.1}, "conf: expected a score threshold in [0, 1], got -0.1"),
        ({"iou": 1.5}, "iou: expected an NMS IoU threshold in [0, 1], got 1.5"),
        ({"max_detections": 0}, "max_detections: expected a positive number, got 0"),
    ],
)
def test_detection_settings_are_checked_once_for_detector_and_replay(engine, settings, message):
    for make in (DetectionSettings, ReplayOptions, lambda **kw: Detector.from_engine(engine, **kw)):
        with pytest.raises(LeanEyeError) as raised:
            make(**settings)
        assert str(raised.value) == message


def test_replay_options_take_the_protocols_bootstrap_and_check_class_id():
    assert ReplayOptions().bootstrap == EVAL_PROTOCOL.bootstrap
    with pytest.raises(LeanEyeError, match="class_id: expected one of index, name, got 'label'"):
        ReplayOptions(class_id="label")


def test_a_model_that_gives_nan_fails_at_activation_naming_the_model(tmp_path, capsys):
    rows = builtin_rows(EMITTED)
    rows[0, 0, 0] = np.nan
    engine = write_builtin_engine(tmp_path / "nan_engine", rows)
    with pytest.raises(LeanEyeError) as raised:
        Detector.from_engine(engine)
    assert str(raised.value) == f"{engine / 'model.onnx'}: output 0 holds NaN or infinite values on a blank input"
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 200, np.uint8))
    out = tmp_path / "coco.json"
    assert leaneye_main(["detect", "--engine", str(engine), str(image), "--coco-json", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"leaneye: error: {raised.value}"
    assert not out.exists()


def test_nan_boxes_on_a_frame_fail_naming_engine_and_image_and_write_no_json(tmp_path, capsys, engine):
    rows = builtin_rows(EMITTED)
    nodes, initializers = nan_on_lit_frames_nodes(rows)
    poisoned = write_builtin_engine(tmp_path / "poisoned", rows, nodes, initializers)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 200, np.uint8))
    out = tmp_path / "coco.json"
    assert leaneye_main(["detect", "--engine", str(poisoned), str(image), "--coco-json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"leaneye: error: {poisoned}: on {image}: the model's outputs give NaN or infinite boxes or scores "
        f"(5 of 5 candidates)"
    )
    assert not out.exists()
    # The same image through a sound engine: strictly valid JSON (no NaN or Infinity literals).
    assert leaneye_main(["detect", "--engine", str(engine), str(image), "--coco-json", str(out)]) == 0

    def refuse(literal):
        raise AssertionError(f"{out} holds {literal}")

    assert len(json.loads(out.read_text(), parse_constant=refuse)["annotations"]) == 3


def test_the_pipeline_imports_neither_ros_nor_rosbags_nor_the_cli():
    code = (
        "import sys, leaneye.pipeline, leaneye.detector, leaneye.msgs.types; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosbags') or m.startswith('leaneye.cli')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_generated_types_name_what_cannot_be_imported():
    types = msgs.GeneratedTypes()
    with pytest.raises(LeanEyeError, match=r"message type no_such_msgs/msg/Thing: cannot import no_such_msgs\.msg"):
        types.get("no_such_msgs/msg/Thing")
    with pytest.raises(LeanEyeError, match="message type json/msg: expected package/msg/Name"):
        types.get("json/msg")
    with pytest.raises(LeanEyeError, match="message type json/decoder/Nothing: json.decoder has no Nothing"):
        types.get("json/decoder/Nothing")
