"""Engines end to end: small ONNX models built here emit known boxes in each output layout; import,
manifest checks, the detector's input tensor, and the `detect` / `bench overhead` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch_free

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from leaneye.cli import build_parser, run_command  # noqa: E402
from leaneye.detector import Detector, InputTensor  # noqa: E402
from leaneye.engine import load_manifest, parse_manifest, write_engine  # noqa: E402
from leaneye.errors import LeanEyeError  # noqa: E402
from leaneye.vision.letterbox import letterbox, letterbox_transform  # noqa: E402
from leaneye_compress.stages.import_onnx import import_model  # noqa: E402

CLASSES = ["car", "person", "bicycle"]
FRAME_SIZE = (300, 500)  # height, width: letterboxed with padding into any square input
# Objects in frame pixels, their classes and scores; the models below emit them in network pixels.
OBJECTS = np.array([[20, 30, 120, 90], [200, 100, 260, 280], [400, 10, 490, 60]], np.float32)
OBJECT_CLASSES = np.array([0, 1, 2])
OBJECT_SCORES = np.array([0.9, 0.8, 0.7], np.float32)


def constant_model(output: np.ndarray, input_shape, input_name="images", metadata=None) -> bytes:
    """An ONNX model that ignores its image input and always emits `output`."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["emitted"], ["output0"])],
        "constant_detector",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output.astype(np.float32), "emitted")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def network_boxes(input_size, align):
    return letterbox_transform(FRAME_SIZE, input_size, align).to_network(OBJECTS)


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


def end2end_output(input_size):
    boxes = network_boxes(input_size, "center")
    rows = np.concatenate([boxes, OBJECT_SCORES[:, None], OBJECT_CLASSES[:, None]], axis=1)
    padding = np.zeros((5, 6), np.float32)  # end2end exports pad to a fixed K with zero scores
    return np.concatenate([rows, padding])[None]


def frame():
    return np.random.default_rng(0).integers(0, 255, FRAME_SIZE + (3,), dtype=np.uint8)


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


# --- manifest checks ---------------------------------------------------------------------------


@pytest.fixture
def engine_dir(tmp_path, classes_file):
    model = tmp_path / "e2e.onnx"
    model.write_bytes(constant_model(end2end_output((320, 320)), [1, 3, 320, 320]))
    import_model(model, "end2end", tmp_path / "engine", classes=classes_file)
    return tmp_path / "engine"


def edit_manifest(engine_dir, edit):
    path = engine_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=2), "'format_version'"),
        (lambda m: m.update(backend="tensorrt9"), "'backend': expected one of"),
        (lambda m: m["decoder"].update(type="yolo_nas"), "'decoder.type'"),
        (lambda m: m["decoder"].update(strides=[8, 16]), "'decoder.strides'"),
        (lambda m: m.update(model="../model.onnx"), "'model': expected a file name inside"),
        (lambda m: m.update(model="/tmp/model.onnx"), "'model': expected a file name inside"),
        (lambda m: m.update(model_sha256="0" * 64), "'model_sha256'"),
        (lambda m: m.update(model_sha256="abc"), "'model_sha256': expected 64 hexadecimal"),
        (lambda m: m["input"].pop("shape"), "'input.shape' is missing"),
        (lambda m: m["input"].update(shape=[1, 3, 320]), "'input.shape'"),
        (lambda m: m["input"].update(color="yuv"), "'input.color'"),
        (lambda m: m["input"].update(scale=0), "'input.scale'"),
        (lambda m: m["input"].update(std=[1, 0, 1]), "'input.std'"),
        (lambda m: m["letterbox"].update(pad_value=300), "'letterbox.pad_value'"),
        (lambda m: m.update(class_names=[]), "'class_names'"),
        (lambda m: m.update(class_names=["car", "car", "bus"]), "'class_names'"),
        (lambda m: m.pop("decoder"), "'decoder' is missing"),
    ],
)
def test_manifest_errors_name_the_field(engine_dir, edit, message):
    edit_manifest(engine_dir, edit)
    with pytest.raises(LeanEyeError, match=message) as error:
        Detector.from_engine(engine_dir)
    assert "manifest.json" in str(error.value) and "\n" not in str(error.value)


def test_a_manifest_that_does_not_fit_the_model_fails_at_activation_naming_its_fields(engine_dir):
    """The manifest parses and the hash matches, but the model emits class 2 and only 2 names remain."""
    edit_manifest(engine_dir, lambda m: m.update(class_names=["car", "person"]))
    with pytest.raises(
        LeanEyeError,
        match=r"manifest.json: fields 'decoder' and 'class_names' do not fit the model's "
        r"outputs: decoder 'end2end': model output class 2 is outside",
    ):
        Detector.from_engine(engine_dir)


@pytest.mark.parametrize("threads", [-3, 10**11])
def test_thread_counts_are_checked(engine_dir, threads):
    with pytest.raises(LeanEyeError, match=rf"threads: expected 0 \(the backend's default\) to 1024, got {threads}"):
        Detector.from_engine(engine_dir, threads=threads)


def test_changed_model_file_and_missing_manifest(engine_dir):
    with open(engine_dir / "model.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(LeanEyeError, match="model_sha256.*changed or corrupt"):
        load_manifest(engine_dir)
    (engine_dir / "manifest.json").unlink()
    with pytest.raises(LeanEyeError, match="not an engine directory"):
        load_manifest(engine_dir)


def test_symlink_out_of_the_engine_is_refused(engine_dir, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.move(engine_dir / "model.onnx", outside)
    (engine_dir / "model.onnx").symlink_to(outside)
    with pytest.raises(LeanEyeError, match="inside the engine directory"):
        load_manifest(engine_dir)


def test_corrupt_model_names_the_file_at_activation(engine_dir, tmp_path):
    manifest = load_manifest(engine_dir).to_dict()
    write_engine(tmp_path / "corrupt", b"\x08\x07garbage", manifest)
    with pytest.raises(LeanEyeError, match=r"corrupt/model\.onnx: ONNX Runtime cannot load"):
        Detector.from_engine(tmp_path / "corrupt")


def test_write_engine_refuses_existing_without_force_and_round_trips(engine_dir):
    manifest = load_manifest(engine_dir)
    with pytest.raises(LeanEyeError, match="already exists"):
        write_engine(engine_dir, engine_dir / "model.onnx", manifest.to_dict())
    assert parse_manifest(manifest.to_dict()) == manifest


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8), "frame.jpg"],
)
def test_bad_frames_are_refused(engine_dir, bad):
    with Detector.from_engine(engine_dir) as detector:
        with pytest.raises(LeanEyeError, match="frame"):
            detector.detect(bad)


# --- the input tensor ---------------------------------------------------------------------------


def test_input_tensor_matches_letterbox_with_colour_order_and_scaling(engine_dir):
    spec = load_manifest(engine_dir).input  # rgb, scale 1/255, 320x320
    tensor = InputTensor(spec, "center", 114)
    image = frame()
    for size in [FRAME_SIZE, (320, 200), FRAME_SIZE]:  # size changes repaint the padding
        image = np.ascontiguousarray(np.resize(image, size + (3,)))
        tensor.fill(image)
        canvas, _ = letterbox(image, spec.size, "center", 114)
        expected = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
        np.testing.assert_allclose(tensor.tensor, expected, rtol=1e-6)


# --- commands ------------------------------------------------------------------------------------


def leaneye(*argv):
    """`leaneye ARGV` in this process."""
    return run_command(build_parser(), list(map(str, argv)))


def test_detect_command_writes_coco_results(engine_dir, tmp_path, capsys):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(images / name), frame())
    out = tmp_path / "detections.json"
    assert leaneye("detect", "--engine", engine_dir, images, "--coco-json", out) == 0
    results = json.loads(out.read_text())
    assert [image["file_name"].rsplit("/", 1)[-1] for image in results["images"]] == ["a.png", "b.jpg"]
    assert results["images"][0]["width"] == FRAME_SIZE[1] and results["images"][0]["height"] == FRAME_SIZE[0]
    first = [a for a in results["annotations"] if a["image_id"] == 1]
    np.testing.assert_allclose(
        [a["bbox"] for a in first], np.concatenate([OBJECTS[:, :2], OBJECTS[:, 2:] - OBJECTS[:, :2]], axis=1), atol=0.01
    )
    assert [a["category_name"] for a in first] == ["car", "person", "bicycle"]
    assert [a["category_id"] for a in first] == [1, 2, 3]
    assert "a.png: 3 detections" in capsys.readouterr().out
    # Refuses to overwrite without --force, and a missing image is a one-line error.
    assert leaneye("detect", "--engine", engine_dir, images, "--coco-json", out) == 2
    assert leaneye("detect", "--engine", engine_dir, tmp_path / "missing.png") == 2
    assert "missing.png" in capsys.readouterr().err


def bench_stages(out):
    """{stage: ms} from the lines `  NAME   VALUE ms` of `leaneye bench overhead`."""
    stages = {}
    for line in out.splitlines():
        name, _, value = line.strip().rpartition("  ")
        if value.endswith(" ms") and "(p90" not in line:
            stages[name.strip()] = float(value[:-3])
    return stages


def test_an_empty_or_unreadable_image_file_is_a_one_line_error(engine_dir, tmp_path, capsys):
    empty, garbage = tmp_path / "empty.jpg", tmp_path / "garbage.png"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a png")
    for path, message in ((empty, "empty file; expected an image"), (garbage, "not a readable image")):
        for argv in (
            ["detect", "--engine", str(engine_dir), str(path)],
            ["bench", "overhead", "--engine", str(engine_dir), str(path)],
        ):
            assert leaneye(*argv) == 2
            [line] = capsys.readouterr().err.splitlines()  # one line, no traceback
            assert line.startswith(f"leaneye: error: {path}: {message}"), line


def test_bench_overhead_reports_time_outside_inference(engine_dir, tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "frame.png"), frame())
    assert leaneye("bench", "overhead", "--engine", engine_dir, tmp_path / "frame.png", "--threads", "1") == 0
    out = capsys.readouterr().out
    assert (
        "on 1 frames of" in out
        and f"frame size {FRAME_SIZE[1]}x{FRAME_SIZE[0]};" in out
        and "median of 200 runs" in out
    )
    stages = bench_stages(out)
    assert set(stages) == {
        "preprocess",
        "postprocess",
        "glue",
        "inference call (session.run)",
        "image decoding (separate)",
    }
    assert all(value >= 0 for value in stages.values()) and stages["image decoding (separate)"] > 0
    assert "outside the inference call" in out and "ratio outside / inference" in out


def test_bench_overhead_reads_bags_raw_and_compressed(engine_dir, tmp_path, capsys):
    from leaneye import msgs
    from leaneye.bags import open_bag_writer

    bag = tmp_path / "drive"
    with open_bag_writer(bag) as writer:
        writer.add_topic("/camera/image_raw", msgs.IMAGE)
        writer.add_topic("/front/compressed", msgs.COMPRESSED_IMAGE)
        for index in range(3):
            stamp = (index + 1) * 10**8
            writer.write("/camera/image_raw", stamp, msgs.image_msg(frame(), stamp, "camera"))
            writer.write("/front/compressed", stamp, msgs.compressed_image_msg(frame(), stamp, "camera", fmt="png"))
    assert (
        leaneye("bench", "overhead", "--engine", engine_dir, bag, "--frames", "2", "--runs", "200", "--threads", "1")
        == 0
    )
    out = capsys.readouterr().out
    assert f"on 2 frames of {bag} /camera/image_raw" in out and f"frame size {FRAME_SIZE[1]}x{FRAME_SIZE[0]};" in out
    raw_decode = bench_stages(out)["image decoding (separate)"]
    # The raw topic's absent sibling is not there, the compressed topic is named directly.
    assert (
        leaneye(
            "bench",
            "overhead",
            "--engine",
            engine_dir,
            bag / "drive.mcap",
            "--topic",
            "/front/compressed",
            "--threads",
            "1",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"on 3 frames of {bag / 'drive.mcap'} /front/compressed" in out
    assert bench_stages(out)["image decoding (separate)"] > raw_decode  # PNG decoding versus a view of the bytes
    assert leaneye("bench", "overhead", "--engine", engine_dir, bag, "--topic", "/rear/image_raw") == 2
    assert "/rear/image_raw" in capsys.readouterr().err
