"""The calibrate stage on tiny ONNX detectors built here with torch: the TensorRT QDQ form is valid,
runs and is symmetric; the ort-cpu engine runs through the runtime's Detector; the sensitivity
fallback rescues a model with one layer of huge activation range; the latency-aware choice keeps
FP32 where INT8 is built to be slower; bad inputs fail in one line with nothing written."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from leaneye.detector import Detector  # noqa: E402
from leaneye.engine import load_manifest, write_engine  # noqa: E402
from leaneye.errors import LeanEyeError  # noqa: E402
from leaneye_compress.cli import main as compress_main  # noqa: E402
from leaneye_compress.frames import FramesConfig, GeneratedFrames  # noqa: E402
from leaneye_compress.quant import (  # noqa: E402
    chosen_float_layers,
    emit_qdq,
    load_ranges,
    prepare_model,
    quantizable_layers,
)
from leaneye_compress.stages.calibrate import (  # noqa: E402
    BudgetConfig,
    CalibrateConfig,
    SelectionConfig,
    calibrate,
)

CLASSES = ("car", "person")


class GridDetector(torch.nn.Module):
    """`body` then a 1x1 class head; one fixed box per cell of the body's output grid ("builtin" rows)."""

    def __init__(self, body: torch.nn.Module, channels: int, input_hw: tuple[int, int], stride: int):
        super().__init__()
        self.body = body
        self.head = torch.nn.Conv2d(channels, len(CLASSES), 1)
        ys, xs = np.meshgrid(np.arange(input_hw[0] // stride), np.arange(input_hw[1] // stride), indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + 1, ys.ravel() + 1], axis=1) * stride
        self.register_buffer("boxes", torch.from_numpy(cells.astype(np.float32))[None])

    def forward(self, x):
        scores = torch.sigmoid(self.head(self.body(x))).flatten(2).transpose(1, 2)
        return torch.cat([self.boxes, scores], 2)


def write_fp32_engine(path, model: torch.nn.Module, input_hw: tuple[int, int]):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 3, *input_hw),),
            buffer,
            input_names=["images"],
            output_names=["output"],
            opset_version=17,
            dynamo=False,
        )
    write_engine(path, buffer.getvalue(), fp32_manifest(input_hw))
    return path


def fp32_manifest(input_hw: tuple[int, int]) -> dict:
    return {
        "format_version": 1,
        "backend": "onnxruntime",
        "precision": "fp32",
        "model": "model.onnx",
        "input": {"name": "images", "shape": [1, 3, *input_hw], "layout": "NCHW", "dtype": "float32"}
        | {"color": "bgr", "scale": 1 / 255, "mean": None, "std": None},
        "letterbox": {"align": "center", "pad_value": 114},
        "decoder": {"type": "builtin"},
        "class_names": list(CLASSES),
    }


def huge_range_detector() -> GridDetector:
    """Two Conv+ReLU layers; the first's channel 7 is a constant 1000 that the second ignores. FP32 does
    not care; one uint8 scale for the whole tensor crushes its other channels to a few levels."""
    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
    )
    model = GridDetector(body, 8, (32, 96), 4)
    with torch.no_grad():
        body[0].weight[7] = 0
        body[0].bias[7] = 1000.0
        body[2].weight[:, 7] = 0
        model.head.weight.mul_(8)  # spread the scores: small changes of the features move detections
    return model


def depthwise_detector() -> GridDetector:
    """Depthwise 5x5 convolutions with SiLU on 8 channels: little arithmetic per byte, where ONNX Runtime's
    float kernels beat its QDQ path by several times on x86."""

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 1)
            self.depthwise = torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 5, padding=2, groups=8) for _ in range(6)])
            self.pool = torch.nn.MaxPool2d(8)

        def forward(self, x):
            x = self.stem(x)
            for conv in self.depthwise:
                x = torch.nn.functional.silu(conv(x))
            return self.pool(x)

    torch.manual_seed(0)
    return GridDetector(Body(), 8, (96, 320), 8)


def small_config(**changes) -> CalibrateConfig:
    values = {
        "data": FramesConfig(scenes=GeneratedFrames(first_seed=7_000_000, sequences=2, frames_per_sequence=4)),
        "min_frames": 8,
        "selection": SelectionConfig(
            frames=FramesConfig(scenes=GeneratedFrames(first_seed=7_100_000, sequences=2, frames_per_sequence=3))
        ),
        "budget": BudgetConfig(min_f1=0.9),
        "sensitivity_frames": 2,
        "max_fallback": 3,
        "extra_steps": 0,
        "latency_runs": 5,
        "warmup_runs": 1,
        "threads": 1,
        "bootstrap": 10,
    }
    values.update(changes)
    return CalibrateConfig(**values)


@pytest.fixture(scope="module")
def huge_range_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("huge_range")
    engine = write_fp32_engine(root / "fp32", huge_range_detector(), (32, 96))
    record, skipped = calibrate(small_config(), engine, root / "out")
    return engine, root / "out", record, skipped


def test_sensitivity_fallback_rescues_the_layer_with_a_huge_range(huge_range_run):
    _, out, record, skipped = huge_range_run
    assert not skipped
    tried = {c["name"]: c for c in record["details"]["configurations"]}
    all_int8 = tried["all-int8"]["accuracy"]
    assert not all_int8["holds"] and all_int8["F1"] < 0.9, all_int8
    held = [c for c in record["details"]["configurations"] if c["accuracy"]["holds"] and c["name"] != "fp32"]
    assert held and held[0]["accuracy"]["F1"] > all_int8["F1"] + 0.1, record["details"]["configurations"]
    # The second conv reads the huge-range tensor: it must be among the layers put back to float.
    layers = {d["index"]: d for d in record["details"]["layers"]}
    assert layers[1]["layer"] in held[0]["placement"]["float_layers"]
    assert layers[1]["sensitivity_rank"] <= 2 and layers[1]["sensitivity"] > 10 * layers[2]["sensitivity"]
    assert set(chosen_float_layers(out)) == set(held[0]["placement"]["float_layers"])
    # Every layer's decision is recorded with its reason.
    assert all(d["decision"] in ("int8", "float") and d["why"] for d in record["details"]["layers"])
    manifest = load_manifest(out)
    assert manifest.precision == record["metrics"]["precision"]
    assert manifest.producer["calibration"]["frames"] == 8 and manifest.producer["calibration"]["method"] == "minmax"


def test_the_tensorrt_qdq_model_is_valid_symmetric_and_runs(huge_range_run):
    import onnxruntime as ort
    from onnx import numpy_helper

    _, out, _, _ = huge_range_run
    model = onnx.load(str(out / "tensorrt" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = initializers[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    # Weights are per channel: some DequantizeLinear carries one scale per output channel.
    assert any(initializers[n.input[1]].size > 1 for n in qdq if n.op_type == "DequantizeLinear")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    output = session.run(None, {"images": np.random.default_rng(0).random((1, 3, 32, 96), dtype=np.float32)})[0]
    assert output.shape == (1, 192, 6) and np.isfinite(output).all()


def test_the_ort_cpu_engine_runs_through_the_detector(huge_range_run, tmp_path):
    engine, out, _, _ = huge_range_run
    fp32_manifest = load_manifest(engine)
    model = prepare_model((engine / "model.onnx").read_bytes(), "fp32")
    layers = quantizable_layers(model)
    # The public API QAD uses: the range cache and a placement give the same emitter's model.
    qdq = emit_qdq(model, load_ranges(out / "ranges.json"), "ort-cpu", float_layers=chosen_float_layers(out))
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) >= len(layers) - 2
    int8 = tmp_path / "int8"
    write_engine(int8, qdq.SerializeToString(), {**fp32_manifest.to_dict(), "precision": "int8"})
    frame = np.random.default_rng(1).integers(0, 255, (120, 250, 3), dtype=np.uint8)
    with (
        Detector.from_engine(int8, conf=0.3, threads=1) as detector,
        Detector.from_engine(engine, conf=0.3, threads=1) as reference,
    ):
        assert detector.manifest.precision == "int8"
        found, expected = detector.detect(frame), reference.detect(frame)
    assert len(expected.scores) > 0
    # Quantized and float agree on most cells of this frame.
    assert abs(len(found.scores) - len(expected.scores)) <= 0.2 * len(expected.scores)


def test_a_float_layer_reads_the_float_activation_of_a_quantized_relu_layer(huge_range_run):
    """U8 quantization folds a ReLU into the range of its Conv's output; the float layer after it must
    still read ReLU'd values, not the Conv's raw output."""
    from leaneye_compress.quant.measure import output_error, run_frames

    engine, out, _, _ = huge_range_run
    model = prepare_model((engine / "model.onnx").read_bytes(), "fp32")
    _, second, head = (layer.name for layer in quantizable_layers(model))
    ranges = load_ranges(out)
    inputs = np.random.default_rng(2).random((3, 3, 32, 96), dtype=np.float32)
    reference = run_frames(model.SerializeToString(), "images", inputs, 1)

    def error(float_layers):
        qdq = emit_qdq(model, ranges, "ort-cpu", float_layers=float_layers)
        return output_error(reference, run_frames(qdq.SerializeToString(), "images", inputs, 1))

    assert error([second, head]) < 0.05 * error([]), (error([second, head]), error([]))


def test_ranges_json_records_method_frames_and_sources(huge_range_run):
    _, out, _, _ = huge_range_run
    ranges = load_ranges(out)
    assert ranges.method == "minmax" and ranges.frames == 8
    assert ranges.sources and all(s.startswith("scene 70000") for s in ranges.sources)
    low, high = max(ranges.ranges.values(), key=lambda r: r[1])
    assert high >= 1000.0  # the constant channel


def test_an_unchanged_rerun_is_skipped(huge_range_run):
    engine, out, record, _ = huge_range_run
    again, skipped = calibrate(small_config(), engine, out)
    assert skipped and again == record


def test_latency_aware_choice_keeps_fp32_when_int8_is_slower(tmp_path):
    engine = write_fp32_engine(tmp_path / "fp32", depthwise_detector(), (96, 320))
    config = small_config(budget=BudgetConfig(min_f1=0.0), max_fallback=0, latency_runs=15, warmup_runs=2)
    record, _ = calibrate(config, engine, tmp_path / "out")
    tried = {c["name"]: c for c in record["details"]["configurations"]}
    assert tried["all-int8"]["accuracy"]["holds"]
    assert tried["all-int8"]["latency"]["p50_ms"] > tried["fp32"]["latency"]["p50_ms"], tried
    assert record["metrics"]["precision"] == "fp32" and tried["fp32"]["chosen"]
    assert "FP32 chosen" in record["details"]["why"]
    manifest = load_manifest(tmp_path / "out")
    assert manifest.precision == "fp32" and "FP32 chosen" in manifest.producer["why"]
    with Detector.from_engine(tmp_path / "out", threads=1) as detector:
        detector.detect(np.zeros((100, 200, 3), np.uint8))
    # The TensorRT form is still written, at the INT8 placement that held the budget.
    assert (tmp_path / "out" / "tensorrt" / "model.onnx").is_file()


# --- bad input: one line, nothing written -------------------------------------------------------


@pytest.fixture(scope="module")
def small_engine(huge_range_run):
    return huge_range_run[0]


def test_too_few_calibration_frames_say_found_and_needed(small_engine, tmp_path):
    with pytest.raises(LeanEyeError, match=r"calibrate.data: found 8 frames .* need at least 50") as error:
        calibrate(small_config(min_frames=50), small_engine, tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_a_budget_no_configuration_meets_names_the_best_found(small_engine, tmp_path):
    with pytest.raises(LeanEyeError, match=r"no INT8 configuration holds the budget .* best found: all-int8 with F1"):
        calibrate(small_config(max_fallback=0), small_engine, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_labels_that_do_not_match_the_class_list(small_engine, tmp_path):
    import cv2

    kitti = tmp_path / "kitti"
    (kitti / "image_2").mkdir(parents=True)
    (kitti / "label_2").mkdir()
    cv2.imwrite(str(kitti / "image_2" / "000000.png"), np.zeros((60, 120, 3), np.uint8))
    (kitti / "label_2" / "000000.txt").write_text("Car 0.0 0 0 10 10 50 50 1 1 1 0 0 0 0\n")
    engine = tmp_path / "engine"
    manifest = json.loads((small_engine / "manifest.json").read_text())
    write_engine(engine, small_engine / "model.onnx", {**manifest, "class_names": ["truck", "bus"]})
    config = small_config(selection=SelectionConfig(kitti=str(kitti)))
    with pytest.raises(LeanEyeError, match=r"labelled classes \['car', 'person'\] are not in the engine's class list"):
        calibrate(config, engine, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_onnx_that_fails_the_checker(tmp_path, capsys):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["output"], name="relu")],
        "broken",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 128, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    engine = tmp_path / "engine"
    write_engine(engine, model.SerializeToString(), fp32_manifest((32, 96)))
    code = compress_main(["calibrate", "--engine", str(engine), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "out").exists()
    assert "not a valid ONNX model (onnx.checker)" in err[-1], err


def test_a_bag_without_images_is_refused_from_the_command_line(small_engine, tmp_path, capsys, shared_fixtures):
    bag = shared_fixtures / "rosbag2_talker_sqlite3"
    code = compress_main(
        ["calibrate", "--engine", str(small_engine), "--data", str(bag), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "out").exists()
    assert "no image topic" in err[-1], err
