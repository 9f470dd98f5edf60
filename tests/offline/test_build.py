"""`leaneye-compress build`: one YAML config runs every stage, skips what is up to date, reruns
from a named stage, names config mistakes, and an interrupt leaves only finished stages behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leaneye.engine import file_sha256
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye_compress.checkpoint import model_payload, save_checkpoint
from leaneye_compress.cli import main as compress_main
from leaneye_compress.models.detector import LeanDet, preset_config

# Every stage at its smallest: a tiny random teacher, a few frames and iterations, a budget any
# INT8 configuration holds (the chain's plumbing is under test here, not its accuracy).
QUICK_CONFIG = """
teacher: teacher.pt
prune: {flops_ratio: 0.6, importance: magnitude, latency: {runs: 2, warmup: 0}}
distill:
  frames: {scenes: {first_seed: 1000, sequences: 2, frames_per_sequence: 2, frame_step: 4}}
  heldout: {first_seed: 9000000, sequences: 1, frames_per_sequence: 2, frame_step: 10}
  iterations: %(iterations)d
  batch_size: 2
  checkpoint_every: 1
  bootstrap: 5
calibrate:
  data: {scenes: {first_seed: 8000000, sequences: 2, frames_per_sequence: 2, frame_step: 8}}
  min_frames: 4
  selection: {scenes: {first_seed: 8500000, sequences: 1, frames_per_sequence: 2, frame_step: 10}}
  budget: {max_drop: 100}
  sensitivity_frames: 1
  max_fallback: 1
  extra_steps: 0
  latency_runs: 2
  warmup_runs: 1
  bootstrap: 5
report:
  heldout: {first_seed: 9000000, sequences: 1, frames_per_sequence: 2, frame_step: 10}
  latency_frames: 1
  rounds: 1
  warmup: 0
  bootstrap: 5
"""
STAGE_FOLDERS = ("prune", "distill", "engines/teacher", "engines/pruned", "engines/student", "calibrate", "report")


def _project(tmp_path: Path, iterations: int = 2) -> Path:
    model = LeanDet(preset_config("student", len(SCENE_CLASSES), 64, 192))
    save_checkpoint(tmp_path / "teacher.pt", model_payload(model, SCENE_CLASSES))
    config = tmp_path / "build.yaml"
    config.write_text(QUICK_CONFIG % {"iterations": iterations})
    return config


def _finished(out: Path) -> dict[str, str]:
    return {folder: (out / folder / "record.json").read_text() for folder in STAGE_FOLDERS}


@pytest.mark.slow
def test_build_runs_every_stage_skips_when_unchanged_and_reruns_from_a_stage(tmp_path, capsys):
    config, out = _project(tmp_path), tmp_path / "build"
    assert compress_main(["build", "--config", str(config), "--out", str(out)]) == 0
    first = _finished(out)
    report = json.loads((out / "report" / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]][:2] == ["teacher fp32 (PyTorch eager)", "teacher fp32"]
    # Each stage's record names the previous stage's output by content.
    distilled_from = json.loads(first["distill"])["inputs"]["student"]["sha256"]
    assert distilled_from == file_sha256(out / "prune" / "model.pt")
    calibrated_from = json.loads(first["calibrate"])["inputs"]
    assert file_sha256(out / "engines" / "student" / "model.onnx") in json.dumps(calibrated_from)
    capsys.readouterr()

    assert compress_main(["build", "--config", str(config), "--out", str(out)]) == 0
    assert _finished(out) == first  # nothing rewritten
    assert capsys.readouterr().err.count("up to date, skipped") == len(STAGE_FOLDERS)

    assert compress_main(["build", "--config", str(config), "--out", str(out), "--from", "calibrate"]) == 0
    again = _finished(out)
    for folder in STAGE_FOLDERS:
        rerun = folder in ("calibrate", "report")
        assert (again[folder] != first[folder]) == rerun, folder

    published = tmp_path / "student"
    assert compress_main(["build", "--config", str(config), "--out", str(out), "--publish", str(published)]) == 0
    assert sorted(p.name for p in published.iterdir()) == sorted(
        ["model.pt", "record.json", "report.md", "report.json", "report.png"]
    )
    assert (published / "model.pt").read_bytes() == (out / "distill" / "model.pt").read_bytes()


def test_a_mistyped_key_is_named_with_the_closest_valid_one(tmp_path, capsys):
    config = tmp_path / "build.yaml"
    config.write_text("prune:\n  flops_ration: 0.5\n")
    assert compress_main(["build", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "unknown key prune.flops_ration" in line and "prune.flops_ratio" in line
    assert not (tmp_path / "out").exists()


def test_an_unknown_stage_and_a_missing_teacher_are_one_line_errors(tmp_path, capsys):
    config = _project(tmp_path)
    out = tmp_path / "out"
    assert compress_main(["build", "--config", str(config), "--out", str(out), "--from", "quantize"]) == 2
    assert "--from quantize: expected one of prune, distill" in capsys.readouterr().err
    config.write_text("teacher: nowhere.pt\n")
    assert compress_main(["build", "--config", str(config), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "teacher nowhere.pt: checkpoint not found" in line
    assert not out.exists()


@pytest.mark.slow
def test_an_interrupt_during_a_stage_leaves_the_finished_stages_and_the_next_run_resumes(tmp_path):
    # Long enough a distillation to be interrupted in the middle of it.
    config, out = _project(tmp_path, iterations=400), tmp_path / "build"
    command = [sys.executable, "-m", "leaneye_compress.cli", "build", "--config", str(config), "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 240
    while not (out / "prune" / "record.json").is_file() or not list(out.glob("distill.work/*.pt")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err.strip().splitlines()[-1]
    assert (out / "prune" / "record.json").is_file()
    assert not (out / "distill").exists()  # the interrupted stage left nothing half-written
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "[build] prune: up to date, skipped" in resumed.stderr
    assert "resuming" in resumed.stderr  # distillation continued from its last checkpoint
