"""The PyTorch backend (leaneye_compress.backends.pytorch), registered through the `leaneye.backends`
entry point: exported engines it runs, its options and their one-line refusals, its life cycle, and
the same detections as ONNX Runtime on the same checkpoint. Here on the CPU; the CUDA paths (FP16,
graph replay) run on a GPU machine through `leaneye-compress bench-gpu` (docs/gpu-pipeline.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leaneye.backends import backend_class
from leaneye.detector import Detector
from leaneye.errors import LeanEyeError
from leaneye.scenes.render import generate_frames
from leaneye_compress.backends.pytorch import PyTorchBackend
from leaneye_compress.cli import main as compress_main
from leaneye_compress.gpu_bench import agreement, run_gpu_bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parents[2] / "compression" / "leaneye_compress" / "default_model" / "model.pt"
)


@pytest.fixture(scope="module")
def pytorch_engine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pt") / "engine"
    assert compress_main(["export", str(DEFAULT_CHECKPOINT), "--backend", "pytorch", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [frame.image for frame in generate_frames(6, seed=3)]


def test_the_entry_point_registers_the_pytorch_backend():
    assert backend_class("pytorch") is PyTorchBackend


def test_export_writes_a_pytorch_engine_with_weights_only(pytorch_engine):
    manifest = json.loads((pytorch_engine / "manifest.json").read_text())
    assert manifest["backend"] == "pytorch" and manifest["model"] == "model.pt"
    saved = torch.load(pytorch_engine / "model.pt", weights_only=True)
    assert "optimizer" not in saved and saved["format"] == "leaneye-leandet"


def test_cpu_pre_post_and_torch_pre_post_give_the_same_detections(pytorch_engine, frames):
    found = {}
    for on_device in (False, True):
        with Detector.from_engine(pytorch_engine, device="cpu", extra={"device_pipeline": on_device}) as detector:
            assert (detector.on_device is not None) == on_device
            found[on_device] = [detector.detect(frame) for frame in frames]
    assert sum(len(d.boxes) for d in found[False]) > 10  # the default model sees the scenes' objects
    for cpu, torch_side in zip(found[False], found[True]):
        np.testing.assert_array_equal(cpu.class_ids, torch_side.class_ids)
        np.testing.assert_allclose(cpu.boxes, torch_side.boxes, atol=1.0)
        assert set(torch_side.timings) == {"preprocess", "inference", "postprocess"}


@pytest.mark.slow
def test_the_same_detections_as_onnx_runtime_on_the_same_checkpoint(pytorch_engine, frames, tmp_path):
    onnx_engine = tmp_path / "onnx"
    assert compress_main(["export", str(DEFAULT_CHECKPOINT), "--out", str(onnx_engine)]) == 0
    with Detector.from_engine(onnx_engine) as ort, Detector.from_engine(pytorch_engine) as pt:
        for frame in frames:
            expected, got = ort.detect(frame), pt.detect(frame)
            np.testing.assert_array_equal(expected.class_ids, got.class_ids)
            np.testing.assert_allclose(expected.boxes, got.boxes, atol=0.05)
            np.testing.assert_allclose(expected.scores, got.scores, atol=1e-4)


def test_redetect_reads_the_device_outputs(pytorch_engine, frames):
    from leaneye.vision.postprocess import DetectionSettings, Postprocessor

    with Detector.from_engine(pytorch_engine, extra={"device_pipeline": True}) as detector:
        first = detector.detect(frames[0])
        again = detector.redetect(Postprocessor(detector.manifest, detector.settings))
        lower = detector.redetect(Postprocessor(detector.manifest, DetectionSettings(conf=0.05)))
    np.testing.assert_allclose(first.boxes, again.boxes, atol=1.0)
    assert len(lower.boxes) >= len(first.boxes)


def test_live_settings_reach_the_device_pipeline(pytorch_engine, frames):
    from leaneye.vision.postprocess import DetectionSettings

    with Detector.from_engine(pytorch_engine, extra={"device_pipeline": True}) as detector:
        before = detector.detect(frames[0])
        detector.update_settings(DetectionSettings(conf=0.99))
        after = detector.detect(frames[0])
    assert len(before.boxes) > len(after.boxes)


@pytest.mark.parametrize(
    ("device", "extra", "message"),
    [
        ("cpu", {"cuda_graph": True}, "extra option 'cuda_graph' needs a CUDA device, got cpu"),
        ("cpu", {"fp16": True}, "extra option 'fp16' needs a CUDA device, got cpu"),
        ("cpu", {"fp16": "yes"}, "extra option 'fp16' expects true or false, got 'yes'"),
        ("cpu", {"int8": True}, "unknown extra option 'int8'"),
        ("tpu", {}, "option device='tpu' is not supported"),
    ],
)
def test_options_it_cannot_honour_are_one_line(pytorch_engine, device, extra, message):
    with pytest.raises(LeanEyeError) as caught:
        Detector.from_engine(pytorch_engine, device=device, extra=extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no CUDA device")
def test_cuda_without_a_gpu_is_one_line(pytorch_engine):
    with pytest.raises(LeanEyeError, match=r"sees no CUDA device .*; use device cpu$"):
        Detector.from_engine(pytorch_engine, device="cuda:0")


def test_a_corrupt_model_file_is_one_line_and_never_unpickled(pytorch_engine, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pytorch_engine, broken)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["model_sha256"] = __import__("hashlib").sha256(b"not a checkpoint").hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LeanEyeError, match=r"model\.pt: not a readable checkpoint"):
        Detector.from_engine(broken)


def test_deactivate_frees_the_model_and_activate_builds_it_again(pytorch_engine, frames):
    detector = Detector.from_engine(pytorch_engine)
    first = detector.detect(frames[1])
    detector.deactivate()
    assert detector.backend.model is None and not detector.backend.active
    detector.activate()
    np.testing.assert_array_equal(first.boxes, detector.detect(frames[1]).boxes)
    detector.deactivate()


def test_the_gpu_bench_runs_its_cpu_rows(pytorch_engine, capsys):
    result = run_gpu_bench(pytorch_engine, "cpu", runs=20, frame_count=2)
    printed = capsys.readouterr().out
    assert set(result["rows"]) == {
        "network, eager FP32",
        "frame, CPU pre/post + backend",
        "frame, all on the device",
    }
    assert all(ms > 0 for ms in result["rows"].values()) and "x eager FP32" in printed
    same = agreement(pytorch_engine, "cpu", 3)
    assert same["frames_with_same_detections"] == 3 and same["max_box_difference_px"] <= 1.0


# --- on a CUDA GPU only (make gpu-check); skipped where torch sees none ---------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")


@needs_cuda
def test_on_cuda_fp16_graph_replay_keeps_the_fp32_detections(pytorch_engine, frames):
    with Detector.from_engine(pytorch_engine, device="cpu") as reference:
        expected = [reference.detect(frame) for frame in frames]
    with Detector.from_engine(pytorch_engine, device="cuda:0") as detector:
        backend = detector.backend
        assert backend.fp16 and backend.graph is not None and detector.on_device is not None
        found = [detector.detect(frame) for frame in frames]
    for cpu, gpu in zip(expected, found):
        np.testing.assert_array_equal(cpu.class_ids, gpu.class_ids)
        np.testing.assert_allclose(cpu.boxes, gpu.boxes, atol=1.0)


@needs_cuda
def test_on_cuda_the_device_pipeline_agrees_with_the_cpu_stages(pytorch_engine):
    same = agreement(pytorch_engine, "cuda:0", 10)
    assert same["frames_with_same_detections"] == 10 and same["max_box_difference_px"] <= 1.0
