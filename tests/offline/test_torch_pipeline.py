"""TorchPipeline (leaneye_compress.backends.torch_pipeline) against the vehicle's CPU path: the same
input tensor from the same frames as InputTensor.fill, the same detections from the same model
outputs as Postprocessor.run (real models run by ONNX Runtime on generated scenes, synthetic outputs
of every layout), the same errors. On the CPU device here; on CUDA too where there is one."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_fixtures_dir
from helpers import builtin_rows, engine_manifest, write_yolox_nano_engine

from leaneye.detector import Detector
from leaneye.engine import load_manifest, parse_manifest
from leaneye.errors import LeanEyeError
from leaneye.scenes.render import generate_frames
from leaneye.vision.letterbox import letterbox_transform
from leaneye.vision.postprocess import DetectionSettings, Postprocessor
from leaneye.vision.preprocess import InputTensor
from leaneye_compress.backends.torch_pipeline import MAX_NMS_CANDIDATES, TorchPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
CLASSES = ["car", "person", "bicycle"]
# Builtin-layout synthetic outputs are in the network pixels of a 96 x 320 input; the frame is twice that.
SYNTHETIC_HW = (96, 320)
SYNTHETIC_FRAME = (192, 640)


def manifest(input_hw, align="center", decoder="builtin", classes=CLASSES, **fields):
    """A checked manifest (no model behind it): what the pipeline reads."""
    data = engine_manifest(input_hw, classes, decoder, align=align, **fields.pop("decoder_params", {}))
    data["input"].update(fields)
    return parse_manifest({**data, "model_sha256": "0" * 64})


@pytest.fixture(scope="module")
def scene_frames() -> list[np.ndarray]:
    return [frame.image for frame in generate_frames(3, seed=11)]


def frames_of_sizes(scene: np.ndarray, input_hw) -> dict[str, np.ndarray]:
    return {
        "kitti 1224x370": scene,
        "portrait 370x1224": cv2.rotate(scene, cv2.ROTATE_90_CLOCKWISE),
        "the input's size": cv2.resize(scene, input_hw[::-1]),
        "odd 517x333, a strided view": scene[11:344, 5:522],
        "odd 101x57, upscaled": np.ascontiguousarray(scene[100:157, 300:401]),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "spec",
    [
        manifest((192, 640), "center", scale=1 / 255),  # the default model's input
        manifest((416, 416), "top-left", scale=1.0),  # YOLOX's
        # RGB with per-channel mean and std in half precision, as ImageNet-normalised FP16 engines take
        manifest(
            (320, 320),
            "center",
            color="rgb",
            dtype="float16",
            scale=1 / 255,
            mean=[0.485, 0.456, 0.406],
            std=[0.229, 0.224, 0.225],
        ),
    ],
    ids=["center 192x640", "top-left 416x416", "rgb mean-std float16 320x320"],
)
def test_preprocess_gives_the_cpu_paths_input_tensor(scene_frames, spec, device):
    cpu = InputTensor(spec.input, spec.letterbox_align, spec.letterbox_pad_value)
    pipeline = TorchPipeline(spec, DetectionSettings(), torch.device(device))
    # cv2's fixed-point bilinear resize (11-bit weights, rounded to uint8) and torch's float one
    # (rounded likewise) give the same level on most pixels, one level apart on the others. Measured
    # here: at most 1.00002 levels, on at most 11.3% of the values, none at the input's own size
    # (without rounding after torch's resize: 0.77 levels, on up to 99% of the values).
    level = spec.input.scale / min(spec.input.std or (1.0,))
    # In float16 (values within +-4: steps of at most 2**-9) the CPU path rounds twice, after the gain
    # and after the offset, the pipeline once at the end: up to two steps apart at the same level.
    rounding = 2**-8 if spec.input.dtype == "float16" else 0.0
    # One pipeline for every size, back and forth: each new size repaints the padding.
    sizes = frames_of_sizes(scene_frames[0], spec.input.size)
    for name in [*sizes, "kitti 1224x370"]:
        frame = sizes[name]
        expected_transform = cpu.fill(frame)
        tensor, transform = pipeline.preprocess(frame)
        assert transform == expected_transform, name
        assert tensor.shape == spec.input.shape and tensor.device.type == device
        assert tensor.dtype == getattr(torch, spec.input.dtype)
        difference = np.abs(tensor.cpu().float().numpy() - cpu.tensor.astype(np.float32))
        assert difference.max() <= level * 1.001 + rounding, name
        assert (difference > rounding).mean() < 0.2, name
        if name == "the input's size":
            assert difference.max() <= rounding  # no resize: the frame's own pixels


def test_preprocess_in_half_precision_for_a_float32_engine(scene_frames):
    spec = manifest((192, 640), "center", scale=1 / 255)
    cpu = InputTensor(spec.input, spec.letterbox_align, spec.letterbox_pad_value)
    pipeline = TorchPipeline(spec, DetectionSettings(), torch.device("cpu"), input_dtype=torch.float16)
    cpu.fill(scene_frames[1])
    tensor, _ = pipeline.preprocess(scene_frames[1])
    assert tensor.dtype == torch.float16
    np.testing.assert_allclose(tensor.float().numpy(), cpu.tensor, atol=1 / 255 + 1e-3, rtol=0)


def test_a_bad_frame_is_refused_as_the_cpu_path_refuses_it():
    pipeline = TorchPipeline(manifest(SYNTHETIC_HW), DetectionSettings(), torch.device("cpu"))
    with pytest.raises(LeanEyeError, match=r"frame: expected an \(H, W, 3\) uint8 BGR image, got shape \[4, 4\]"):
        pipeline.preprocess(np.zeros((4, 4), np.uint8))


def assert_same_detections(spec, settings, outputs, device, transform=None, image_size=SYNTHETIC_FRAME):
    """TorchPipeline.postprocess gives what Postprocessor.run gives; returns its detections."""
    transform = transform or letterbox_transform(image_size, spec.input.size, spec.letterbox_align)
    expected = Postprocessor(spec, settings).run(outputs, transform, image_size)
    pipeline = TorchPipeline(spec, settings, torch.device(device))
    found = pipeline.postprocess([torch.from_numpy(output).to(device) for output in outputs], transform, image_size)
    boxes, scores, class_ids = found
    assert (boxes.dtype, scores.dtype, class_ids.dtype) == (np.float32, np.float32, np.int64)
    assert boxes.shape == (len(scores), 4) and len(scores) == len(class_ids) <= settings.max_detections
    assert class_ids.tolist() == expected[2].tolist()
    np.testing.assert_allclose(boxes, expected[0], atol=1.0, rtol=0)
    np.testing.assert_allclose(scores, expected[1], atol=1e-5, rtol=0)
    return found


@pytest.fixture(scope="module")
def yolox_nano_engine(tmp_path_factory):
    return write_yolox_nano_engine(tmp_path_factory.mktemp("yolox") / "engine", shared_fixtures_dir())


@pytest.fixture(scope="module")
def default_model_engine(tmp_path_factory):
    """The project's default model (LeanDet, builtin decoder) exported to ONNX as `leaneye-compress export` does."""
    from leaneye_compress.demo import DEFAULT_CHECKPOINT
    from leaneye_compress.stages.export import export_engine

    engine = tmp_path_factory.mktemp("default_model") / "engine"
    export_engine(DEFAULT_CHECKPOINT, engine)
    return engine


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "engine_fixture",
    ["yolox_nano_engine", pytest.param("default_model_engine", marks=pytest.mark.slow)],  # slow: the ONNX export
)
def test_postprocess_of_real_models_gives_the_cpu_paths_detections(request, scene_frames, engine_fixture, device):
    engine = request.getfixturevalue(engine_fixture)
    spec = load_manifest(engine)
    counts = {}
    with Detector.from_engine(engine, threads=1) as detector:
        for frame in scene_frames:
            transform = detector.preprocess(frame)
            outputs = detector.backend.infer(detector.input.tensor)
            for conf in (0.25, 0.001):
                for class_agnostic in (False, True):
                    settings = DetectionSettings(conf=conf, iou=0.45, class_agnostic=class_agnostic)
                    found = assert_same_detections(spec, settings, outputs, device, transform, frame.shape[:2])
                    counts.setdefault((conf, class_agnostic), []).append(len(found[1]))
    # The models find things, more at evaluation's threshold, fewer when classes suppress each other.
    assert 0 < min(counts[0.25, False]) and sum(counts[0.25, False]) < sum(counts[0.001, False])
    assert sum(counts[0.001, True]) <= sum(counts[0.001, False])


# Nine boxes in a row, each overlapping the next with IoU 0.43 and the one after with 0.11, scores
# falling: at IoU 0.4 greedy NMS keeps every other one (box 2 is kept because box 1, which would
# suppress it, is itself suppressed); suppressing by every higher-scoring box would keep box 0 alone.
CHAIN = [([4 * i, 0, 4 * i + 10, 10], 0, 0.9 - 0.05 * i) for i in range(9)]


@pytest.mark.parametrize("device", DEVICES)
def test_nms_is_greedy_along_a_chain_of_suppressions(device):
    spec = manifest(SYNTHETIC_HW)
    boxes, scores, class_ids = assert_same_detections(
        spec, DetectionSettings(iou=0.4), [builtin_rows(CHAIN, len(CLASSES))], device
    )
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert boxes[:, 0].tolist() == [0, 16, 32, 48, 64]  # frame pixels: twice the network's


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("class_agnostic", [False, True])
def test_nms_conventions_match_the_cpu_path(device, class_agnostic):
    emitted = [
        ([100, 0, 110, 10], 0, 0.6),  # equal scores, IoU 0.82: the first in input order is kept
        ([101, 0, 111, 10], 0, 0.6),
        ([101, 20, 111, 30], 0, 0.6),  # and the other way round
        ([100, 20, 110, 30], 0, 0.6),
        ([100, 0, 110, 10], 1, 0.55),  # another class on top of the first: suppressed only class-agnostic
        ([200, 0, 210, 10], 0, 0.5),  # IoU exactly 0.5, not above the threshold: both kept
        ([200, 0, 210, 5], 0, 0.45),
        ([250, 0, 250, 10], 2, 0.3),  # two empty boxes count as identical (OpenCV's rule)
        ([280, 0, 280, 10], 2, 0.2),
        ([300, 40, 310, 50], 2, 0.0),  # score 0 passes conf 0 but is never kept
    ]
    settings = DetectionSettings(conf=0.0, iou=0.5, class_agnostic=class_agnostic)
    boxes, scores, class_ids = assert_same_detections(
        manifest(SYNTHETIC_HW), settings, [builtin_rows(emitted, len(CLASSES))], device
    )
    kept = [(200, 0, 0), (202, 40, 0), (200, 0, 1), (400, 0, 0), (400, 0, 0), (500, 0, 2)]
    if class_agnostic:
        kept.remove((200, 0, 1))
    assert list(zip(boxes[:, 0].tolist(), boxes[:, 1].tolist(), class_ids.tolist())) == kept
    assert scores.tolist() == pytest.approx([0.6, 0.6, *([] if class_agnostic else [0.55]), 0.5, 0.45, 0.3])


def random_boxes(rng, count, input_hw):
    """(count, 4) centre-size boxes inside the input, 4-60 pixels a side: many overlap."""
    height, width = input_hw
    centres = rng.uniform((0, 0), (width, height), (count, 2))
    return np.concatenate([centres, rng.uniform(4, 60, (count, 2))], axis=1).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ultralytics_layout_gives_the_cpu_decoders_detections(device, dtype):
    rng = np.random.default_rng(5)
    spec = manifest(SYNTHETIC_HW, decoder="ultralytics")
    count = 800
    # Scores in steps of 0.05: many equal scores, whose order must be kept.
    class_scores = rng.integers(0, 20, (count, len(CLASSES))).astype(np.float32) / 20
    output = np.concatenate([random_boxes(rng, count, SYNTHETIC_HW), class_scores], axis=1).T[None].astype(dtype)
    for conf in (0.25, 0.001):
        for class_agnostic in (False, True):
            settings = DetectionSettings(conf=conf, class_agnostic=class_agnostic, max_detections=100)
            _, scores, _ = assert_same_detections(spec, settings, [output], device)
            assert len(scores) == 100  # max_detections, highest scores first
            assert (np.diff(scores) <= 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_end2end_layout_gives_the_cpu_decoders_detections_without_nms(device):
    rng = np.random.default_rng(6)
    spec = manifest(SYNTHETIC_HW, decoder="end2end")
    centre_size = random_boxes(rng, 60, SYNTHETIC_HW)
    xyxy = np.concatenate([centre_size[:, :2] - centre_size[:, 2:] / 2, centre_size[:, :2] + centre_size[:, 2:] / 2], 1)
    scores = rng.integers(0, 10, (60, 1)) / 10  # equal scores keep the model's order
    class_ids = rng.integers(0, len(CLASSES), (60, 1))
    rows = np.concatenate([xyxy, scores, class_ids], axis=1)
    output = np.concatenate([rows, np.zeros((20, 6))]).astype(np.float32)[None]  # padded with zero scores
    for conf in (0.25, 0.001):
        _, found, _ = assert_same_detections(spec, DetectionSettings(conf=conf, max_detections=40), [output], device)
        assert len(found) == min(40, int((scores >= conf).sum()))


def errors_of_bad_outputs():
    yolox = manifest((64, 64), "top-left", "yolox", scale=1.0, decoder_params={"strides": [8, 16, 32]})
    rows = builtin_rows([([10, 10, 30, 30], 0, 0.9), ([40, 10, 60, 30], 1, 0.8)], len(CLASSES))
    nan_box = rows.copy()
    nan_box[0, 1, 2] = np.nan
    end2end_row = np.array([[[1, 1, 9, 9, 0.9, 3]]], np.float32)  # class 3 of 3 class names
    return [
        pytest.param(manifest(SYNTHETIC_HW), [], id="no outputs"),
        pytest.param(manifest(SYNTHETIC_HW), [rows[0]], id="no batch axis"),
        pytest.param(manifest(SYNTHETIC_HW), [rows[..., :-1]], id="too few classes"),
        pytest.param(yolox, [np.zeros((1, 85, 5 + len(CLASSES)), np.float32)], id="yolox cells"),
        pytest.param(manifest(SYNTHETIC_HW, decoder="end2end"), [np.zeros((1, 5, 7), np.float32)], id="end2end width"),
        pytest.param(manifest(SYNTHETIC_HW, decoder="end2end"), [end2end_row], id="end2end class"),
        pytest.param(manifest(SYNTHETIC_HW), [nan_box], id="NaN box"),
    ]


@pytest.mark.parametrize("spec, outputs", errors_of_bad_outputs())
def test_bad_outputs_give_the_cpu_paths_errors(spec, outputs):
    transform = letterbox_transform(SYNTHETIC_FRAME, spec.input.size, spec.letterbox_align)
    with pytest.raises(LeanEyeError) as cpu_error:
        Postprocessor(spec, DetectionSettings()).run(outputs, transform, SYNTHETIC_FRAME)
    pipeline = TorchPipeline(spec, DetectionSettings(), torch.device("cpu"))
    with pytest.raises(LeanEyeError) as torch_error:
        pipeline.postprocess([torch.from_numpy(output) for output in outputs], transform, SYNTHETIC_FRAME)
    assert type(torch_error.value) is type(cpu_error.value)
    assert str(torch_error.value) == str(cpu_error.value)


def test_only_the_best_candidates_up_to_the_cap_take_part_in_nms():
    # 5000 one-pixel boxes that touch but never overlap, in shuffled score order: the CPU path keeps
    # them all, the pipeline the MAX_NMS_CANDIDATES best.
    count = 5000
    ys, xs = np.divmod(np.arange(count), SYNTHETIC_HW[1])
    scores = np.random.default_rng(7).permutation(np.linspace(0.3, 0.9, count, dtype=np.float32))
    rows = np.zeros((1, count, 4 + len(CLASSES)), np.float32)
    rows[0, :, :4] = np.stack([xs, ys, xs + 1, ys + 1], axis=1)
    rows[0, :, 4] = scores
    spec, settings = manifest(SYNTHETIC_HW), DetectionSettings(max_detections=count)
    transform = letterbox_transform(SYNTHETIC_FRAME, SYNTHETIC_HW, "center")
    expected = Postprocessor(spec, settings).run([rows], transform, SYNTHETIC_FRAME)
    found = TorchPipeline(spec, settings, torch.device("cpu")).postprocess(
        [torch.from_numpy(rows)], transform, SYNTHETIC_FRAME
    )
    assert len(expected[1]) == count and len(found[1]) == MAX_NMS_CANDIDATES < count
    np.testing.assert_array_equal(found[1], expected[1][:MAX_NMS_CANDIDATES])
    np.testing.assert_array_equal(found[0], expected[0][:MAX_NMS_CANDIDATES])
