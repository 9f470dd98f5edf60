"""Quantization-aware distillation: the fake-quantized student computes closer to ONNX Runtime's QDQ
model than the float student does, and the stage fine-tunes a calibrated student and writes the
same QDQ form again as an engine directory leaneye runs, with PTQ and QAD scored side by side."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from test_distill import INPUT, TINY, make_teacher, tiny_config

from leaneye.engine import load_manifest
from leaneye.errors import LeanEyeError
from leaneye_compress.checkpoint import load_model
from leaneye_compress.config import from_mapping
from leaneye_compress.data import SceneSetConfig, render_scene_set
from leaneye_compress.frames import FramesConfig, GeneratedFrames
from leaneye_compress.models.contract import network_input
from leaneye_compress.models.detector import DecodedOutputs
from leaneye_compress.quant import chosen_float_layers, emit_qdq, load_ranges, prepare_model
from leaneye_compress.quant.measure import run_frames
from leaneye_compress.stages.calibrate import BudgetConfig, CalibrateConfig, SelectionConfig, calibrate
from leaneye_compress.stages.distill import distill
from leaneye_compress.stages.export import export_engine, onnx_bytes
from leaneye_compress.stages.qad import QADConfig, fake_quantized, fold_batch_norm, plain, qad

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A small distilled student, its FP32 engine and its calibration (tensorrt flavour)."""
    root = tmp_path_factory.mktemp("qad")
    make_teacher(root / "teacher.pt")
    distill(tiny_config(iterations=20), root / "teacher.pt", "student", root / "student")
    export_engine(root / "student" / "model.pt", root / "engine")
    config = CalibrateConfig(
        data=FramesConfig(scenes=GeneratedFrames(first_seed=7_000_000, sequences=2, frames_per_sequence=4)),
        min_frames=8,
        selection=SelectionConfig(
            frames=FramesConfig(scenes=GeneratedFrames(first_seed=7_100_000, sequences=2, frames_per_sequence=3))
        ),
        budget=BudgetConfig(min_f1=0.0),
        sensitivity_frames=2,
        max_fallback=2,
        extra_steps=0,
        latency_runs=3,
        warmup_runs=1,
        threads=1,
        bootstrap=10,
        emitter="tensorrt",
    )
    calibrate(config, root / "engine", root / "calibrate")
    return root


@pytest.mark.slow
def test_the_fake_quantized_student_computes_closer_to_the_qdq_model_than_the_float_one(calibrated):
    root = calibrated
    student, _ = load_model(root / "student" / "model.pt")
    ranges = load_ranges(root / "calibrate" / "ranges.json")
    float_layers = list(chosen_float_layers(root / "calibrate"))
    fp32 = prepare_model(onnx_bytes(student.eval()), "student")
    qdq = emit_qdq(fp32, ranges, "tensorrt", float_layers=float_layers).SerializeToString()
    frames = render_scene_set(SceneSetConfig(9_000_000, 1, 4, 10, (306, 92), INPUT))
    x = network_input(frames.images)
    simulated, quantized = fake_quantized(fold_batch_norm(student), fp32, ranges, "tensorrt", set(float_layers))
    assert len(quantized) == 76 - len(float_layers)  # every Conv of the placement, found through its weight name
    with torch.no_grad():
        floating = DecodedOutputs(load_model(root / "student" / "model.pt")[0].eval())(torch.from_numpy(x)).numpy()
        fake = DecodedOutputs(simulated.eval())(torch.from_numpy(x)).numpy()
        # folding BatchNorm changes nothing but rounding
        folded = DecodedOutputs(plain(simulated, simulated.state_dict()))(torch.from_numpy(x)).numpy()
    ort = np.concatenate([out[0] for out in run_frames(qdq, "images", x, 1)])
    assert np.abs(folded - floating).max() < 1e-3
    boxes = np.s_[..., :4]
    # Closer, not much closer: only Conv inputs and weights are simulated, not the Q/DQ TensorRT puts
    # on residual Adds (measured 0.59x the float model's error here, 0.91x in a fresh-clone CI run).
    assert np.abs(fake[boxes] - ort[boxes]).mean() < np.abs(floating[boxes] - ort[boxes]).mean()


@pytest.mark.slow
def test_qad_fine_tunes_and_writes_the_same_qdq_form(calibrated, tmp_path):
    root = calibrated
    config = from_mapping(QADConfig, {"distill": {**TINY, "iterations": 12, "lr": 1e-4}, "threads": 1}, "test")
    # self-distillation: the float student teaches its own INT8 form
    record, skipped = qad(
        config, root / "student" / "model.pt", root / "student" / "model.pt", root / "calibrate", tmp_path / "out"
    )
    assert not skipped
    metrics, details = record["metrics"], record["details"]
    assert details["calibrated_model_is_this_checkpoint"]
    # trained: the fine-tuned weights (BatchNorm folded) moved from the student's, folded alike
    tuned = load_model(tmp_path / "out" / "model.pt")[0].state_dict()
    start = fold_batch_norm(load_model(root / "student" / "model.pt")[0]).state_dict()
    assert any(not torch.allclose(tuned[k], start[k]) for k in tuned if k.endswith("0.weight"))
    assert all(np.isfinite(metrics[k]["output_error_vs_fp32"]) for k in ("ptq", "qad"))
    for name in ("fp32", "ptq", "qad"):
        assert 0 <= metrics[name]["mAP50-95"] <= 1 and "mean_F1" in metrics[name]["agreement_with_fp32"]
    assert "PTQ" in metrics["verdict"] and "QAD" in metrics["verdict"]

    out = tmp_path / "out"
    assert load_manifest(out).precision == "int8"
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model)
    calibrated_trt = onnx.load(root / "calibrate" / "tensorrt" / "model.onnx")
    tensorrt = onnx.load(out / "tensorrt" / "model.onnx")
    onnx.checker.check_model(tensorrt)

    def quantize_nodes(m):
        return sorted(n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear")

    # the same placement and ranges as calibrate's: the same tensors quantized, with the same activation scales
    assert quantize_nodes(tensorrt) == quantize_nodes(calibrated_trt) == quantize_nodes(model)
    zero_points = [numpy_helper.to_array(i) for i in tensorrt.graph.initializer if "zero_point" in i.name]
    assert zero_points and all(not z.any() for z in zero_points)
    assert json.loads((out / "ranges.json").read_text()) == json.loads((root / "calibrate" / "ranges.json").read_text())

    from leaneye.detector import Detector

    with Detector.from_engine(out) as detector:
        detector.activate()
        detector.detect(np.zeros((92, 306, 3), np.uint8))


def test_a_folder_that_is_not_a_calibrate_output_is_one_line(tmp_path):
    (tmp_path / "cal").mkdir()
    with pytest.raises(LeanEyeError, match="expected a calibrate stage output") as error:
        qad(QADConfig(), tmp_path / "s.pt", tmp_path / "t.pt", tmp_path / "cal", tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
