"""Checkpoints: version 2 records every convolution's width (a pruned model loads), version 1 (the
committed default model) still loads, and a bad size or width is a one-line error."""

from __future__ import annotations

import re

import pytest
import torch

from leaneye.errors import LeanEyeError
from leaneye_compress.artifacts import read_record
from leaneye_compress.checkpoint import load_model, model_payload, read_checkpoint, save_checkpoint
from leaneye_compress.cli import main as compress_main
from leaneye_compress.demo import DEFAULT_CHECKPOINT
from leaneye_compress.models.detector import LeanDet, LeanDetConfig, layer_channels

CLASSES = ["car", "truck", "bus", "person", "bicycle", "traffic light"]


def _pruned_model() -> LeanDet:
    """A LeanDet whose widths no longer follow its width multiplier, as pruning leaves it."""
    config = LeanDetConfig(num_classes=len(CLASSES), width=0.25, input_height=64, input_width=128)
    widths = layer_channels(LeanDet(config))
    hidden = widths["stage3.1.blocks.0.conv1.0"][0]
    head = widths["heads.0.stem.0"][1]
    changed = {
        "stage3.1.blocks.0.conv1.0": (hidden, 24),  # a bottleneck's inner width
        "stage3.1.blocks.0.conv2.0": (24, hidden),
        "heads.0.stem.0": (widths["heads.0.stem.0"][0], head - 8),  # a head's width, read by both branches
        "heads.0.cls_branch.0.0": (head - 8, head),
        "heads.0.box_branch.0.0": (head - 8, head),
    }
    torch.manual_seed(3)
    model = LeanDet(config, changed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    assert layer_channels(model) == {**widths, **changed} != widths
    return model.eval()


def test_a_pruned_model_saves_as_version_2_and_loads_with_equal_outputs(tmp_path):
    model = _pruned_model()
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model_payload(model, CLASSES))
    assert read_checkpoint(path)["version"] == 2
    loaded, data = load_model(path)
    assert layer_channels(loaded) == layer_channels(model) and data["class_names"] == CLASSES
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        for got, expected in zip(loaded(x), model(x)):
            assert torch.equal(got, expected)


def test_the_committed_version_1_default_model_still_loads_with_its_record():
    data = read_checkpoint(DEFAULT_CHECKPOINT)
    assert data["version"] == 1 and "layer_channels" not in data
    model, _ = load_model(DEFAULT_CHECKPOINT)
    assert model.config.width == 0.45 and (model.config.input_height, model.config.input_width) == (192, 640)
    record = read_record(DEFAULT_CHECKPOINT.parent)
    assert record["stage"] == "train" and record["config"]["preset"] == "teacher"
    assert round(record["metrics"]["mAP50"], 3) == 0.920 and round(record["metrics"]["mAP50-95"], 3) == 0.651


def _export_error(tmp_path, capsys, payload: dict) -> str:
    path = tmp_path / "bad.pt"
    save_checkpoint(path, payload)
    assert compress_main(["export", str(path), "--out", str(tmp_path / "engine")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and not (tmp_path / "engine").exists()
    return line


def test_a_huge_or_unaligned_input_size_is_a_one_line_error(tmp_path, capsys):
    payload = model_payload(LeanDet(LeanDetConfig(num_classes=len(CLASSES), width=0.25)), CLASSES)
    huge = {**payload, "model_config": {**payload["model_config"], "input_height": 10**6}}
    assert "input_height 1000000: expected an integer in 1..8192" in _export_error(tmp_path, capsys, huge)
    odd = {**payload, "model_config": {**payload["model_config"], "input_width": 650}}
    assert "input_width 650: expected a multiple of 32" in _export_error(tmp_path, capsys, odd)


def test_recorded_widths_that_do_not_chain_are_a_one_line_error(tmp_path, capsys):
    model = LeanDet(LeanDetConfig(num_classes=len(CLASSES), width=0.25, input_height=64, input_width=128))
    payload = model_payload(model, CLASSES)
    # the conv widened, its BatchNorm and the next conv left as they were: the widths contradict the weights
    payload["layer_channels"]["stem.0"] = [3, 24]
    assert "does not match the LeanDet architecture" in _export_error(tmp_path, capsys, payload)


def test_version_3_and_missing_widths_are_refused(tmp_path):
    model = LeanDet(LeanDetConfig(num_classes=len(CLASSES), width=0.25, input_height=64, input_width=128))
    path = tmp_path / "model.pt"
    save_checkpoint(path, model_payload(model, CLASSES))
    data = torch.load(path, weights_only=True)
    for edit, message in (
        (dict(version=3), "version 3; this tool reads versions 1, 2"),
        (dict(), "no 'layer_channels'"),
    ):
        broken = {key: value for key, value in data.items() if edit or key != "layer_channels"}
        torch.save({**broken, **edit}, path)
        with pytest.raises(LeanEyeError, match=re.escape(message)):
            read_checkpoint(path)
