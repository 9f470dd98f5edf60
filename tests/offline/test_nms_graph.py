"""NMS appended to an engine's ONNX (stages/nms.py): the graph is valid ONNX whose NMS node carries the
documented attributes, the NonMaxSuppression graph run by ONNX Runtime gives what the CPU decoder + NMS
give, and bad input is one line."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from helpers import TINY_ENGINE_DIR, constant_model, engine_manifest, frame
from onnx import numpy_helper

from leaneye.detector import Detector
from leaneye.engine import load_manifest, write_engine
from leaneye.errors import LeanEyeError
from leaneye_compress.cli import main as compress_main
from leaneye_compress.stages.nms import PLUGIN_DOMAIN, NmsConfig, append_nms

pytestmark = pytest.mark.torch_free

CLUSTER_CLASSES = ("car", "person", "bicycle")
CLUSTER_INPUT_HW = (128, 192)


def cluster_rows(seed: int = 0, count: int = 400) -> np.ndarray:
    """[1, count, 4 + 3] builtin rows: boxes jittered around 12 centres (heavy overlap within and across
    classes), class probabilities spread so that every threshold tested cuts through them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform([20, 20], [172, 108], (12, 2))[rng.integers(0, 12, count)]
    size = rng.uniform(8, 40, (count, 2))
    centre = centres + rng.normal(0, 4, (count, 2))
    probabilities = rng.dirichlet([0.3] * len(CLUSTER_CLASSES), count) * rng.uniform(0.05, 1.0, (count, 1))
    return np.concatenate([centre - size / 2, centre + size / 2, probabilities], axis=1).astype(np.float32)[None]


@pytest.fixture(scope="module")
def cluster_engine(tmp_path_factory):
    """A builtin-decoder engine whose model emits `cluster_rows()` whatever the frame."""
    path = tmp_path_factory.mktemp("cluster") / "engine"
    model = constant_model(cluster_rows(), [1, 3, *CLUSTER_INPUT_HW])
    write_engine(path, model, engine_manifest(CLUSTER_INPUT_HW, CLUSTER_CLASSES))
    return path


def assert_same_detections(cpu: Detector, graph: Detector, image: np.ndarray) -> int:
    """Same boxes (to 1e-3 px in frame pixels), scores and classes, in the same order; returns how many."""
    expected, got = cpu.detect(image), graph.detect(image)
    assert got.class_ids.tolist() == expected.class_ids.tolist()
    np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.boxes, expected.boxes, rtol=0, atol=1e-3)
    return len(expected.scores)


def nodes_by_op(model: onnx.ModelProto) -> dict:
    return {node.op_type: node for node in model.graph.node}


def test_onnx_kind_is_valid_onnx_with_the_thresholds_in_its_nonmaxsuppression_node(tmp_path):
    config = NmsConfig(kind="onnx", score_threshold=0.3, iou_threshold=0.6, max_detections=20)
    append_nms(config, TINY_ENGINE_DIR, tmp_path / "nms")
    model = onnx.load(str(tmp_path / "nms" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    node = nodes_by_op(model)["NonMaxSuppression"]
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    max_boxes, iou, score = (constants[name] for name in node.input[2:5])
    assert max_boxes.tolist() == [20] and iou.tolist() == [np.float32(0.6)]
    # One float32 step below 0.3: the operator keeps score > threshold, the runtime's decoder score >= 0.3.
    assert score.tolist() == [np.nextafter(np.float32(0.3), np.float32(0))]
    assert [a.i for a in node.attribute if a.name == "center_point_box"] == [0]  # corners: x1, y1, x2, y2
    [output] = model.graph.output
    assert output.name == "detections" and output.type.tensor_type.shape.dim[2].dim_value == 6

    manifest = load_manifest(tmp_path / "nms")
    assert manifest.decoder == "end2end" and manifest.decoder_params == {}
    recorded = manifest.producer["nms"]
    assert (recorded["kind"], recorded["operator"], recorded["source_decoder"]) == (
        "onnx",
        "NonMaxSuppression",
        "builtin",
    )
    assert (recorded["score_threshold"], recorded["iou_threshold"], recorded["max_detections"]) == (0.3, 0.6, 20)
    assert recorded["class_agnostic"] is False


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_efficientnms_kind_carries_the_documented_plugin_attributes(tmp_path, class_agnostic):
    config = NmsConfig(
        kind="efficientnms", score_threshold=0.2, iou_threshold=0.5, max_detections=50, class_agnostic=class_agnostic
    )
    append_nms(config, TINY_ENGINE_DIR, tmp_path / "nms")
    model = onnx.load(str(tmp_path / "nms" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    node = nodes_by_op(model)["EfficientNMS_TRT"]
    assert node.domain == PLUGIN_DOMAIN and {o.domain: o.version for o in model.opset_import}[PLUGIN_DOMAIN] == 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {
        "plugin_version": b"1",
        "plugin_namespace": b"",
        "score_threshold": pytest.approx(0.2),
        "iou_threshold": pytest.approx(0.5),
        "max_output_boxes": 50,
        "background_class": -1,
        "score_activation": 0,
        "class_agnostic": int(class_agnostic),
        "box_coding": 0,
    }
    assert len(node.input) == 2 and len(node.output) == 4  # boxes, scores -> num_detections, boxes, scores, classes
    [output] = model.graph.output
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1, 50, 6]
    assert load_manifest(tmp_path / "nms").producer["nms"]["operator"] == "EfficientNMS_TRT"


def test_onnx_runtime_refuses_the_efficientnms_engine_in_one_line(tmp_path):
    append_nms(NmsConfig(kind="efficientnms"), TINY_ENGINE_DIR, tmp_path / "nms")
    with pytest.raises(LeanEyeError) as error:
        Detector.from_engine(tmp_path / "nms", threads=1)
    message = str(error.value)
    assert "\n" not in message and "ONNX Runtime cannot load" in message and "EfficientNMS_TRT" in message


@pytest.mark.parametrize(
    "score, iou, max_detections, class_agnostic",
    [(0.25, 0.45, 300, False), (0.05, 0.3, 300, False), (0.1, 0.6, 300, True), (0.05, 0.45, 7, False)],
)
def test_nonmaxsuppression_graph_in_onnx_runtime_equals_the_cpu_decoder_and_nms(
    tmp_path, cluster_engine, score, iou, max_detections, class_agnostic
):
    config = NmsConfig(
        score_threshold=score, iou_threshold=iou, max_detections=max_detections, class_agnostic=class_agnostic
    )
    append_nms(config, cluster_engine, tmp_path / "nms")
    settings = {"conf": score, "max_detections": max_detections, "threads": 1}
    cpu = Detector.from_engine(cluster_engine, iou=iou, class_agnostic=class_agnostic, **settings)
    graph = Detector.from_engine(tmp_path / "nms", **settings)
    kept = assert_same_detections(cpu, graph, frame())
    # The thresholds cut: NMS removed boxes (400 candidates), and max_detections binds where it is small.
    assert 0 < kept < (cluster_rows()[0, :, 4:].max(axis=1) >= score).sum()
    assert kept == max_detections or max_detections > 7


def test_a_score_equal_to_the_threshold_is_kept_as_the_cpu_path_keeps_it(tmp_path):
    # Boxes 1-3 overlap in a row: IoU(1, 2) 0.82, IoU(1, 3) 0.67, IoU(2, 3) 0.82; box 0 scores exactly 0.25.
    rows = np.array(
        [[[10, 10, 30, 30, 0.25, 0], [50, 10, 70, 30, 0, 0.5], [52, 10, 72, 30, 0, 0.4], [54, 10, 74, 30, 0, 0.3]]],
        np.float32,
    )
    engine = tmp_path / "engine"
    write_engine(engine, constant_model(rows, [1, 3, 64, 96]), engine_manifest((64, 96), ["a", "b"]))
    append_nms(NmsConfig(score_threshold=0.25, iou_threshold=0.7), engine, tmp_path / "nms")
    cpu = Detector.from_engine(engine, conf=0.25, iou=0.7, threads=1)
    graph = Detector.from_engine(tmp_path / "nms", conf=0.25, threads=1)
    assert assert_same_detections(cpu, graph, frame()) == 3  # 0.5, 0.3 (IoU 0.67 <= 0.7) and the 0.25 box


@pytest.mark.parametrize("iou", ["0", "0.0"])
def test_efficientnms_with_iou_threshold_0_is_one_line(tmp_path, capsys, iou):
    out = tmp_path / "nms"
    command = ["nms", "--engine", str(TINY_ENGINE_DIR), "--kind", "efficientnms", "--iou-threshold", iou]
    assert compress_main([*command, "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "leaneye-compress: error: command line: iou_threshold 0 with kind efficientnms: "
        "EfficientNMS_TRT needs an IoU threshold above 0"
    )
    assert not out.exists()


def test_cli_writes_the_engine_and_prints_the_record(tmp_path, capsys):
    out = tmp_path / "nms"
    command = ["nms", "--engine", str(TINY_ENGINE_DIR), "--kind", "onnx", "--score-threshold", "0.5"]
    assert compress_main([*command, "--iou-threshold", "0.4", "--max-detections", "10", "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["score_threshold"] == 0.5 and record["model_sha256"] == load_manifest(out).model_sha256
    detections = Detector.from_engine(out, conf=0.5, threads=1).detect(frame())
    assert detections.scores.tolist() == pytest.approx([0.9, 0.7])  # the tiny engine's 0.6 box is suppressed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--score-threshold", "0"], "--score-threshold: expected a score threshold in (0, 1], got '0'"),
        (["--score-threshold", "1.5"], "--score-threshold: expected a score threshold in (0, 1], got '1.5'"),
        (["--iou-threshold", "nan"], "--iou-threshold: expected an NMS IoU threshold in [0, 1], got 'nan'"),
        (["--max-detections", "0"], "--max-detections: expected a number of boxes from 1 to 4096, got '0'"),
        (["--max-detections", "5000"], "--max-detections: expected a number of boxes from 1 to 4096, got '5000'"),
    ],
)
def test_thresholds_out_of_range_are_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "nms"
    assert compress_main(["nms", "--engine", str(TINY_ENGINE_DIR), *flags, "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"leaneye-compress: error: {message}"
    assert not out.exists()


def test_a_config_built_in_code_is_checked_too(tmp_path):
    with pytest.raises(LeanEyeError, match=r"^nms config: iou_threshold 1.5: expected >= 0 and <= 1$"):
        append_nms(NmsConfig(iou_threshold=1.5), TINY_ENGINE_DIR, tmp_path / "nms")
    assert not (tmp_path / "nms").exists()


def test_an_engine_that_suppresses_already_is_refused_in_one_line(tmp_path, capsys):
    append_nms(NmsConfig(), TINY_ENGINE_DIR, tmp_path / "once")
    out = tmp_path / "twice"
    assert compress_main(["nms", "--engine", str(tmp_path / "once"), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "field 'decoder.type' is 'end2end' (its model suppresses already)" in line
    assert "builtin or yolox" in line and not out.exists()


def test_a_model_whose_output_does_not_fit_its_decoder_is_refused_in_one_line(tmp_path):
    engine = tmp_path / "engine"
    rows = cluster_rows()[:, :, :6]  # 2 classes' columns for 3 class names
    write_engine(
        engine, constant_model(rows, [1, 3, *CLUSTER_INPUT_HW]), engine_manifest(CLUSTER_INPUT_HW, CLUSTER_CLASSES)
    )
    with pytest.raises(
        LeanEyeError, match=r"has shape \[1, 400, 6\]; decoder 'builtin' with 3 class names expects \[1, N, 7\]"
    ):
        append_nms(NmsConfig(), engine, tmp_path / "nms")
    assert not (tmp_path / "nms").exists()


@pytest.mark.parametrize("score, iou, class_agnostic", [(0.25, 0.45, False), (0.05, 0.6, False), (0.1, 0.5, True)])
def test_yolox_nonmaxsuppression_graph_equals_the_cpu_decoder_and_nms_on_kitti(
    tmp_path, yolox_engine, shared_fixtures, score, iou, class_agnostic
):
    engine = yolox_engine
    append_nms(
        NmsConfig(score_threshold=score, iou_threshold=iou, class_agnostic=class_agnostic), engine, tmp_path / "nms"
    )
    cpu = Detector.from_engine(engine, conf=score, iou=iou, class_agnostic=class_agnostic, threads=1)
    graph = Detector.from_engine(tmp_path / "nms", conf=score, threads=1)
    images = sorted((shared_fixtures / "kitti_tiny" / "image_2").iterdir())[:6]
    # YOLOX boxes go through exp() in the graph and in NumPy: equal to float32 rounding, not bit for bit.
    kept = [assert_same_detections(cpu, graph, cv2.imread(str(path))) for path in images]
    assert sum(kept) > 0
