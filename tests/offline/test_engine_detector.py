"""Importing ONNX models as engines (leaneye-compress import): small ONNX models built with onnx.helper
emit known boxes in each output layout. The engine's runtime checks are in tests/runtime/test_engine_runtime.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch_free

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import (  # noqa: E402
    CLASSES,
    OBJECT_CLASSES,
    OBJECT_SCORES,
    OBJECTS,
    constant_model,
    end2end_output,
    frame,
    network_boxes,
)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from leaneye.detector import Detector  # noqa: E402
from leaneye.errors import LeanEyeError  # noqa: E402
from leaneye_compress.stages.import_onnx import import_model  # noqa: E402


def class_scores(rows):
    """(rows, classes) scores: each object's score at its class, plus a lower-scoring duplicate row."""
    scores = np.zeros((rows, len(CLASSES)), np.float32)
    scores[np.arange(len(OBJECTS)), OBJECT_CLASSES] = OBJECT_SCORES
    return scores


def ultralytics_output(input_size):
    boxes = network_boxes(input_size, "center")
    # Each object, then a slightly shifted duplicate (to be suppressed), then one below threshold.
    xyxy = np.concatenate([boxes, boxes + 2, boxes[:1] + 50])
    scores = np.concatenate([class_scores(3), class_scores(3) * 0.9, np.full((1, 3), 0.05, np.float32)])
    centre_size = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    return np.concatenate([centre_size, scores], axis=1).T[None]


def builtin_output(input_size):
    boxes = network_boxes(input_size, "center")
    rows = np.concatenate(
        [np.concatenate([boxes, class_scores(3)], axis=1), np.concatenate([boxes + 2, class_scores(3) * 0.9], axis=1)]
    )
    return rows[None]


def assert_finds_objects(engine_dir):
    with Detector.from_engine(engine_dir, conf=0.25, iou=0.5, threads=1) as detector:
        found = detector.detect(frame())
    np.testing.assert_allclose(found.boxes, OBJECTS, atol=1e-3)
    np.testing.assert_allclose(found.scores, OBJECT_SCORES, atol=1e-6)
    assert found.class_ids.tolist() == OBJECT_CLASSES.tolist()
    assert found.names == ("car", "person", "bicycle") and found.class_names == tuple(CLASSES)
    assert set(found.timings) == {"preprocess", "inference", "postprocess"}


@pytest.fixture
def classes_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return path


def test_ultralytics_model_with_metadata_imports_and_decodes(tmp_path):
    input_size = (320, 320)
    metadata = {"names": repr(dict(enumerate(CLASSES))), "imgsz": "[320, 320]", "stride": "32"}
    # Dynamic height/width: the import takes them from imgsz.
    model = tmp_path / "yolo.onnx"
    model.write_bytes(constant_model(ultralytics_output(input_size), [1, 3, "height", "width"], metadata=metadata))
    manifest = import_model(model, "ultralytics", tmp_path / "engine")
    assert manifest["class_names"] == CLASSES and manifest["input"]["shape"] == [1, 3, 320, 320]
    assert manifest["input"]["color"] == "rgb" and manifest["letterbox"]["align"] == "center"
    assert_finds_objects(tmp_path / "engine")


def test_builtin_model_on_a_rectangular_input(tmp_path, classes_file):
    input_size = (256, 384)
    model = tmp_path / "own.onnx"
    model.write_bytes(constant_model(builtin_output(input_size), [1, 3, *input_size]))
    import_model(model, "builtin", tmp_path / "engine", classes=classes_file)
    assert_finds_objects(tmp_path / "engine")


def test_end2end_model_skips_nms(tmp_path, classes_file):
    input_size = (320, 320)
    model = tmp_path / "e2e.onnx"
    model.write_bytes(constant_model(end2end_output(input_size), [1, 3, *input_size]))
    import_model(model, "end2end", tmp_path / "engine", classes=classes_file)
    assert_finds_objects(tmp_path / "engine")


def test_import_refuses_class_count_mismatch_and_missing_names(tmp_path, classes_file):
    model = tmp_path / "yolo.onnx"
    model.write_bytes(constant_model(np.zeros((1, 4 + 5, 10), np.float32), [1, 3, 320, 320]))
    with pytest.raises(LeanEyeError, match="5 classes"):
        import_model(model, "ultralytics", tmp_path / "engine", classes=classes_file)
    with pytest.raises(LeanEyeError, match="--classes"):
        import_model(model, "ultralytics", tmp_path / "engine")
    dynamic = tmp_path / "dynamic.onnx"
    dynamic.write_bytes(constant_model(np.zeros((1, 7, 10), np.float32), [1, 3, "h", "w"]))
    with pytest.raises(LeanEyeError, match="--input-size"):
        import_model(dynamic, "ultralytics", tmp_path / "engine", classes=classes_file)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(LeanEyeError, match="broken.onnx"):
        import_model(broken, "ultralytics", tmp_path / "engine", classes=classes_file)
    assert not (tmp_path / "engine").exists()


def test_import_runs_the_model_once_so_a_wrong_decoder_fails_even_with_dynamic_output_shapes(tmp_path, classes_file):
    """Dynamic exports declare symbolic output shapes: only running the model shows the layout."""

    def dynamic_output_model(output: np.ndarray) -> Path:
        model = onnx.load_from_string(constant_model(output, [1, 3, 320, 320]))
        model.graph.output[0].type.tensor_type.shape.CopyFrom(
            helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", "rows", "columns"]).tensor_type.shape
        )
        path = tmp_path / "dynamic_output.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    ultralytics = dynamic_output_model(ultralytics_output((320, 320)))  # [1, 4 + 3, 7]
    with pytest.raises(
        LeanEyeError,
        match=r"dynamic_output.onnx: --decoder yolox and its 3 class names do not fit the model's outputs: .*\[1, N, 5 \+ classes\]",
    ):
        import_model(ultralytics, "yolox", tmp_path / "engine", classes=classes_file)
    with pytest.raises(LeanEyeError, match=r"--decoder end2end and its 3 class names do not fit .*\[1, K, 6\]"):
        import_model(ultralytics, "end2end", tmp_path / "engine", classes=classes_file)
    two_classes = tmp_path / "two.txt"
    two_classes.write_text("car\nperson\n")
    with pytest.raises(LeanEyeError, match="model output has 3 classes but the engine names 2"):
        import_model(ultralytics, "ultralytics", tmp_path / "engine", classes=two_classes)
    assert not (tmp_path / "engine").exists()
    import_model(ultralytics, "ultralytics", tmp_path / "engine", classes=classes_file)  # the right decoder
    assert_finds_objects(tmp_path / "engine")


def test_a_model_that_loads_but_cannot_run_fails_at_import_in_one_line(tmp_path, classes_file, capfd):
    """Dynamic height/width, but a Reshape inside wants 3x320x320 pixels: at 256x256 ONNX Runtime fails in run()."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "fixed"], ["output0"])],
        "rigid",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["n", "c", "y", "x"])],
        initializer=[numpy_helper.from_array(np.array([1, 3, 320, 320], np.int64), "fixed")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "rigid.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(
        LeanEyeError, match=r"rigid.onnx: ONNX Runtime cannot run this model on its \[1, 3, 256, 256\] float32 input: "
    ) as error:
        import_model(path, "ultralytics", tmp_path / "engine", classes=classes_file, input_size=(256, 256))
    assert str(error.value).startswith(f"{path}: ONNX Runtime cannot run")  # not blamed on the decoder
    assert not (tmp_path / "engine").exists()
    assert "Reshape" not in capfd.readouterr().err  # ONNX Runtime's own log of the failure is silenced


def test_import_refuses_a_model_whose_outputs_are_nan_naming_it(tmp_path, classes_file):
    output = ultralytics_output((320, 320))
    output[0, 0, 0] = np.nan
    model = tmp_path / "nan.onnx"
    model.write_bytes(constant_model(output, [1, 3, 320, 320]))
    with pytest.raises(LeanEyeError) as raised:
        import_model(model, "ultralytics", tmp_path / "engine", classes=classes_file)
    assert str(raised.value) == "nan.onnx: output 0 holds NaN or infinite values on a blank input"
    assert not (tmp_path / "engine").exists()
