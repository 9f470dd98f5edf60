"""LeanDet: ONNX export equals PyTorch, training lowers the loss, bad inputs fail with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from leaneye_compress.cli import main as compress_main
from leaneye_compress.models.contract import INPUT_NAME
from leaneye_compress.models.detector import (
    STRIDES,
    DecodedOutputs,
    LeanDet,
    LeanDetConfig,
    count_parameters,
    preset_config,
)
from leaneye_compress.stages.export import onnx_bytes


def _random_model(width=0.25, height=96, input_width=320, seed=0) -> LeanDet:
    torch.manual_seed(seed)
    model = LeanDet(LeanDetConfig(num_classes=6, width=width, input_height=height, input_width=input_width))
    # Random BatchNorm statistics, so the comparison exercises folded scales and shifts, not identities.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_presets_differ_in_size_and_keep_channels_multiple_of_8():
    teacher = LeanDet(preset_config("teacher", 6))
    student = LeanDet(preset_config("student", 6))
    assert count_parameters(student) < count_parameters(teacher) / 2
    assert count_parameters(teacher) * 4 < 10e6  # an fp32 checkpoint under 10 MB
    for model in (teacher, student):
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                assert m.in_channels % 8 == 0 or m.in_channels == 3  # only the stem sees the 3 colours
                assert m.out_channels % 8 == 0 or m.out_channels in (4, 6)  # only the head's box/class outputs
            assert not isinstance(m, (torch.nn.SiLU, torch.nn.Hardswish, torch.nn.GELU))
    with pytest.raises(ValueError, match="preset"):
        preset_config("huge", 6)


@pytest.mark.slow
def test_onnx_export_is_self_contained_and_equals_pytorch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an exporter that writes external weights would leave files here
    model = _random_model()
    data = onnx_bytes(model)
    assert list(tmp_path.iterdir()) == []
    proto = onnx.load_from_string(data)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert proto.opset_import[0].version == 17
    ops = {node.op_type for node in proto.graph.node}
    assert "Conv" in ops and not ops & {"HardSwish", "Elu", "Selu", "Gelu", "Mish"}  # INT8-friendly ops only
    x = np.random.default_rng(1).random((1, 3, 96, 320), dtype=np.float32)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
    with torch.no_grad():
        expected = DecodedOutputs(model)(torch.from_numpy(x)).numpy()
    cells = sum((96 // s) * (320 // s) for s in STRIDES)
    assert got.shape == expected.shape == (1, cells, 4 + 6)
    # Tolerances: boxes in pixels (up to 320) to 1e-3 px, probabilities to 1e-5.
    np.testing.assert_allclose(got[..., :4], expected[..., :4], atol=1e-3, rtol=0)
    np.testing.assert_allclose(got[..., 4:], expected[..., 4:], atol=1e-5, rtol=0)


def test_decoded_output_layout_matches_the_documentation():
    """Row order: stride 8 first, row-major; boxes are anchor centre -/+ distances."""
    model = _random_model()
    with torch.no_grad():
        out = DecodedOutputs(model)(torch.rand(1, 3, 96, 320))[0].numpy()
    centres = []
    for s in STRIDES:  # the documented order, computed independently of the model
        ys, xs = np.mgrid[0 : 96 // s, 0 : 320 // s]
        centres.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], 1))
    centres = np.concatenate(centres)
    assert len(centres) == len(out)
    # every box is its cell centre minus/plus positive distances, so it contains that centre
    assert np.all(out[:, 0] <= centres[:, 0]) and np.all(centres[:, 0] <= out[:, 2])
    assert np.all(out[:, 1] <= centres[:, 1]) and np.all(centres[:, 1] <= out[:, 3])
    assert 0 <= out[:, 4:].min() and out[:, 4:].max() <= 1


def _tiny_config(path: Path, **overrides) -> Path:
    config = {
        "preset": "student",
        "input_size": [96, 320],
        "frame_size": [612, 185],
        "train": {"first_seed": 1000, "sequences": 6, "frames_per_sequence": 4, "frame_step": 3},
        "heldout": {"first_seed": 9000000, "sequences": 2, "frames_per_sequence": 3, "frame_step": 10},
        "iterations": 40,
        "batch_size": 4,
        "lr": 0.004,
        "warmup": 5,
        "eval_every": 1000,
        "checkpoint_every": 20,
        "bootstrap": 20,
        **overrides,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_writes_a_checkpoint_that_exports(tmp_path):
    config = _tiny_config(tmp_path / "tiny.yaml")
    out, work = tmp_path / "model", tmp_path / "work"
    assert compress_main(["train", "--config", str(config), "--out", str(out), "--work-dir", str(work)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["stage"] == "train" and record["config"]["iterations"] == 40 and record["inputs"] == {}
    assert {"torch", "leaneye", "leaneye-compress"} <= set(record["tool_versions"]) and record["wall_s"] > 0
    losses = [h["loss"] for h in record["details"]["history"] if "loss" in h]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    assert {"mAP50", "mAP50-95", "AP_by_size"} <= set(record["metrics"])
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "record.json"]
    assert (work / "last.pt").exists() and list((work / "cache").glob("scenes-*.npz"))
    # The same config again: skipped, the output untouched.
    written = (out / "model.pt").stat().st_mtime_ns
    assert compress_main(["train", "--config", str(config), "--out", str(out), "--work-dir", str(work)]) == 0
    assert (out / "model.pt").stat().st_mtime_ns == written
    engine = tmp_path / "engine"
    assert compress_main(["export", str(out / "model.pt"), "--out", str(engine)]) == 0
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["decoder"]["type"] == "builtin" and manifest["input"]["shape"] == [1, 3, 96, 320]
    assert manifest["producer"]["max_abs_difference_vs_torch"] < 1e-3 and manifest["producer"]["opset"] == 17
    # The exported ONNX imported on its own gets the same preparation of frames as the export gave it.
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(manifest["class_names"]) + "\n")
    imported = tmp_path / "imported"
    assert (
        compress_main(
            [
                "import",
                str(engine / manifest["model"]),
                "--decoder",
                "builtin",
                "--classes",
                str(classes),
                "--out",
                str(imported),
            ]
        )
        == 0
    )
    imported_manifest = json.loads((imported / "manifest.json").read_text())
    assert imported_manifest["input"] == manifest["input"] and imported_manifest["letterbox"] == manifest["letterbox"]


def test_bad_inputs_fail_with_one_line_naming_the_culprit(tmp_path, capsys):
    bad_preset = _tiny_config(tmp_path / "bad.yaml", preset="huge")
    assert compress_main(["train", "--config", str(bad_preset), "--out", str(tmp_path / "o")]) == 2
    assert "preset 'huge'" in capsys.readouterr().err
    bad_key = _tiny_config(tmp_path / "badkey.yaml", iteratons=5)
    assert compress_main(["train", "--config", str(bad_key), "--out", str(tmp_path / "o")]) == 2
    assert "iteratons" in capsys.readouterr().err
    zero = _tiny_config(tmp_path / "zero.yaml", iterations=0)
    assert compress_main(["train", "--config", str(zero), "--out", str(tmp_path / "o")]) == 2
    assert "iterations" in capsys.readouterr().err
    existing = tmp_path / "exists"
    existing.mkdir()
    assert compress_main(["train", "--config", str(_tiny_config(tmp_path / "ok.yaml")), "--out", str(existing)]) == 2
    assert "--force" in capsys.readouterr().err
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(b"\x80\x02garbage")
    assert compress_main(["export", str(corrupt), "--out", str(tmp_path / "engine")]) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "engine").exists() and not (tmp_path / "o").exists()
