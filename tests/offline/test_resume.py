"""`train --resume` after a real Ctrl-C continues exactly: the same weights and loss history as an
uninterrupted run of the same config."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import interrupt_at_first_checkpoint

from leaneye_compress.checkpoint import read_checkpoint
from leaneye_compress.cli import main as compress_main

TINY = {
    "preset": "student",
    "input_size": [64, 128],
    "frame_size": [306, 92],
    "train": {"first_seed": 1000, "sequences": 3, "frames_per_sequence": 4, "frame_step": 3},
    "heldout": {"first_seed": 9000000, "sequences": 1, "frames_per_sequence": 2, "frame_step": 10},
    "iterations": 30,
    "batch_size": 2,
    "warmup": 5,
    "eval_every": 1000,
    "checkpoint_every": 3,
    "bootstrap": 0,
}


@pytest.mark.slow
def test_resume_after_ctrl_c_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    common = ["train", "--config", str(config), "--cache-dir", str(cache)]
    assert compress_main([*common, "--out", str(straight)]) == 0

    resumed, work = tmp_path / "resumed", tmp_path / "resumed.work"
    returncode, err = interrupt_at_first_checkpoint([*common, "--out", str(resumed)], work / "last.pt")
    assert returncode == 130, err
    assert err.strip().splitlines()[-1] == "leaneye-compress: interrupted; nothing half-written was left behind"
    assert not resumed.exists()
    interrupted_at = read_checkpoint(work / "last.pt")["iteration"]
    assert 0 < interrupted_at < TINY["iterations"]

    assert compress_main([*common, "--out", str(resumed), "--resume"]) == 0
    expected = read_checkpoint(straight / "model.pt")["state_dict"]
    got = read_checkpoint(resumed / "model.pt")["state_dict"]
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    histories = [json.loads((out / "record.json").read_text())["details"]["history"] for out in (straight, resumed)]
    assert histories[0] == histories[1] and len(histories[0]) == TINY["iterations"] // 10
