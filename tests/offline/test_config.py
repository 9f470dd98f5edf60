"""Stage configs (config.py, training's TrainConfig): every mistake is one line naming the file and
the key, found before any work starts; nothing is written."""

from __future__ import annotations

import pytest
import yaml

from leaneye.errors import LeanEyeError
from leaneye_compress.cli import main as compress_main
from leaneye_compress.config import from_mapping, load_config, to_mapping
from leaneye_compress.models.loss import LossConfig
from leaneye_compress.stages.train import TrainConfig


def test_teacher_and_student_configs_load_and_round_trip():
    from conftest import REPO_ROOT

    for name in ("teacher", "student"):
        config = load_config(TrainConfig, REPO_ROOT / "compression" / "configs" / f"{name}.yaml")
        assert config.preset == name and config.input_size == (192, 640) and config.loss == LossConfig()
        assert from_mapping(TrainConfig, to_mapping(config), "again") == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"iteratons": 5}, "unknown key iteratons; the closest valid key is iterations"),
        ({"loss": {"topk": 3}}, "unknown key loss.topk; the closest valid key is loss.top_k"),
        ({"loss": {"top_k": 0}}, "loss.top_k 0: expected > 0"),
        ({"train": {"sequences": 0}}, "train.sequences 0: expected > 0"),
        ({"heldout": {"first_seed": -1}}, "heldout.first_seed -1: expected >= 0"),
        ({"batch_size": 2.5}, "batch_size: expected an integer, got 2.5"),
        ({"batch_size": True}, "batch_size: expected an integer, got True"),
        ({"lr": "fast"}, "lr: expected a finite number, got 'fast'"),
        ({"lr": float("nan")}, "lr: expected a finite number, got nan"),
        ({"frame_size": [0, 0]}, "frame_size[0] 0: expected >= 16"),
        ({"input_size": ["abc", 640]}, "input_size[0]: expected an integer, got 'abc'"),
        ({"input_size": [192, 650]}, "input_size[1] 650: expected >= 32 and <= 8192 and a multiple of 32"),
        ({"input_size": [192, 64000]}, "input_size[1] 64000"),
        ({"input_size": 192}, "input_size: expected a list of 2 values, got 192"),
        ({"preset": "huge"}, "preset 'huge': expected one of teacher, student"),
        ({"ema_decay": 1.5}, "ema_decay 1.5: expected >= 0 and <= 1"),
        ({"train": [1, 2]}, "train: expected a mapping with keys first_seed"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path, capsys, data, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "model"
    assert compress_main(["train", "--config", str(config), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"leaneye-compress: error: {config}: ") and message in line
    assert list(tmp_path.iterdir()) == [config]  # no output, no work folder


@pytest.mark.parametrize(
    "content, message",
    [
        (b"preset: \xff\xfe teacher\n", "not UTF-8 text"),
        (b"- 1\n- 2\n", "expected a mapping with keys preset"),
        (b"iterations: [1,\n", "not valid YAML"),
    ],
)
def test_unreadable_configs_are_one_line(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    assert compress_main(["train", "--config", str(config), "--out", str(tmp_path / "model")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(config) in line and message in line


def test_an_empty_config_is_all_defaults_and_a_missing_one_is_named(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(TrainConfig, empty) == TrainConfig()
    with pytest.raises(LeanEyeError, match="absent.yaml: file not found"):
        load_config(TrainConfig, tmp_path / "absent.yaml")


def test_the_iterations_option_is_checked_like_the_config(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("preset: student\n")
    assert compress_main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "--iterations", "0"]) == 2
    assert "--iterations: iterations 0: expected > 0" in capsys.readouterr().err
