"""Distillation stage: it brings a student closer to its teacher on held-out frames, distils from
label-free image folders and videos, resumes after Ctrl-C, skips an unchanged run, refuses bad
input in one line, and a 2-process torchrun (gloo) step equals the 1-process step.

Run as a script under torchrun (`_ddp_worker`) it is the DDP test's worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from leaneye.errors import LeanEyeError
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye_compress.checkpoint import load_model, model_payload, read_checkpoint, save_checkpoint
from leaneye_compress.cli import main as compress_main
from leaneye_compress.config import from_mapping
from leaneye_compress.models.detector import LeanDet, layer_channels, preset_config
from leaneye_compress.stages.distill import (
    DistillConfig,
    Distiller,
    _processes,
    distill,
    distill_in_memory,
    training_frames,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INPUT = (64, 128)
TINY = {
    "frames": {"scenes": {"first_seed": 1000, "sequences": 3, "frames_per_sequence": 4, "frame_step": 3}},
    "frame_size": [306, 92],
    "heldout": {"first_seed": 9000000, "sequences": 2, "frames_per_sequence": 4, "frame_step": 10},
    "iterations": 30,
    "batch_size": 4,
    "lr": 5e-3,
    "warmup": 2,
    "checkpoint_every": 5,
    "bootstrap": 0,
}


def tiny_config(**changes) -> DistillConfig:
    return from_mapping(DistillConfig, {**TINY, **changes}, "test")


def make_teacher(path: Path, class_names=SCENE_CLASSES, seed: int = 1) -> LeanDet:
    """An untrained teacher whose outputs depend on the frame: class weights scaled up (a few cells
    score high), BatchNorm statistics taken from a few random frames (at their defaults,
    activations fade to nothing)."""
    torch.manual_seed(seed)
    teacher = LeanDet(preset_config("teacher", len(class_names), *INPUT))
    for head in teacher.heads:
        nn.init.normal_(head.cls_out.weight, std=0.3)
    norms = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None  # a cumulative average over the frames below
    with torch.no_grad():
        for _ in range(3):
            teacher.train()(torch.rand(4, 3, *INPUT))
    for m in norms:
        m.momentum = 0.1
    save_checkpoint(path, model_payload(teacher.eval(), class_names))
    return teacher


def make_pruned_student(path: Path) -> dict:
    """A student checkpoint whose first convolution is narrower than its width multiplier gives."""
    student = LeanDet(preset_config("student", len(SCENE_CLASSES), *INPUT))
    channels = layer_channels(student)
    channels["stem.0"] = (3, 8)
    channels["stage2.0.0"] = (8, channels["stage2.0.0"][1])
    torch.manual_seed(2)
    student = LeanDet(student.config, channels)
    save_checkpoint(path, model_payload(student, SCENE_CLASSES))
    return channels


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    make_teacher(folder / "teacher.pt")
    channels = make_pruned_student(folder / "student.pt")
    return folder, channels


def test_distillation_brings_a_pruned_student_closer_to_its_teacher_on_heldout_frames(models, tmp_path):
    folder, channels = models
    config = tiny_config(loss={"feature_weight": 1.0})
    record, skipped = distill(config, folder / "teacher.pt", folder / "student.pt", tmp_path / "out")
    assert not skipped
    metrics = record["metrics"]
    before = metrics["before"]["heldout_distance_to_teacher"]["total"]
    after = metrics["heldout_distance_to_teacher"]["total"]
    assert after < 0.75 * before, (before, after)
    # the output keeps the pruned widths, and what the record says is what the file holds
    student, data = load_model(tmp_path / "out" / "model.pt")
    assert layer_channels(student) == channels
    assert metrics["model"]["parameters"] == sum(p.numel() for p in student.parameters())
    assert record["details"]["heldout_seeds"] == [9000000, 9000001]
    assert record["inputs"].keys() == {"teacher", "student"}

    # an unchanged rerun is skipped; the CLI says so
    again, skipped = distill(config, folder / "teacher.pt", folder / "student.pt", tmp_path / "out")
    assert skipped and again == record


def test_unchanged_run_is_skipped_through_the_cli(models, tmp_path, capsys):
    folder, _ = models
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({**TINY, "iterations": 2}))
    argv = ["distill", "--teacher", str(folder / "teacher.pt"), "--student", "student", "--out", str(tmp_path / "o")]
    argv += ["--config", str(config)]
    assert compress_main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert compress_main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    record = json.loads((tmp_path / "o" / "record.json").read_text())
    assert record["config"]["student_preset"] == "student"
    assert read_checkpoint(tmp_path / "o" / "model.pt")["model_config"]["width"] == 0.25


def test_label_free_frames_from_an_image_folder_and_a_video(models, tmp_path):
    folder, _ = models
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(5):
        cv2.imwrite(str(images / f"{k:02d}.png"), rng.integers(0, 255, (92, 306, 3), dtype=np.uint8))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 96))
    for k in range(6):
        writer.write(np.full((96, 320, 3), 30 * k, np.uint8))
    writer.release()
    config = tiny_config(
        frames={"paths": [str(images), str(video)], "every": 2, "scenes": {"sequences": 0}}, iterations=3
    )
    record, _ = distill(config, folder / "teacher.pt", "student", tmp_path / "out")
    # 5 images and every second of 6 video frames; no labels, so no ground-truth term could run
    assert record["details"]["distill_frames"] == 8
    assert "8 frames from" in record["details"]["frames"]
    assert "frames[1]" in record["inputs"] and any(k.startswith("frames[0]/") for k in record["inputs"])
    assert (tmp_path / "out" / "model.pt").is_file()


def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path):
    folder, _ = models
    other = tmp_path / "other.pt"
    make_teacher(other, class_names=("car", "person"))
    with pytest.raises(LeanEyeError, match=r"classes \[.*\] differ from the teacher's") as error:
        distill(tiny_config(), other, folder / "student.pt", tmp_path / "out")
    assert "\n" not in str(error.value)

    images = tmp_path / "few"
    images.mkdir()
    for k in range(2):
        cv2.imwrite(str(images / f"{k}.png"), np.zeros((40, 60, 3), np.uint8))
    few = tiny_config(frames={"paths": [str(images)], "scenes": {"sequences": 0}})
    with pytest.raises(LeanEyeError, match=r"distill frames: found 2 frames in 2 frames from .*, need at least 4"):
        distill(few, folder / "teacher.pt", "student", tmp_path / "out")

    with pytest.raises(LeanEyeError, match="not a preset"):
        distill(tiny_config(), folder / "teacher.pt", "tiny", tmp_path / "out")
    overlapping = tiny_config(frames={"scenes": {"first_seed": 8999999, "sequences": 2}})
    with pytest.raises(LeanEyeError, match="overlap the held-out seeds"):
        distill(overlapping, folder / "teacher.pt", "student", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_distill_in_memory_recovers_a_student_in_place(models):
    folder, _ = models
    teacher, _ = load_model(folder / "teacher.pt")
    student, _ = load_model(folder / "student.pt")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = distill_in_memory(student, teacher, tiny_config(), iterations=8, desc="recover")
    assert result["iterations"] == 8 and result["loss_last"] < result["loss_first"]
    changed = [k for k, v in student.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
    assert all(type(m) is nn.BatchNorm2d for m in student.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.slow
def test_ctrl_c_then_rerun_resumes_and_matches_an_uninterrupted_run(models, tmp_path):
    folder, _ = models
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({**TINY, "iterations": 16, "checkpoint_every": 2, "lr": 3e-3}))
    common = ["distill", "--teacher", str(folder / "teacher.pt"), "--student", "student", "--config", str(config)]
    assert compress_main([*common, "--out", str(tmp_path / "straight")]) == 0

    resumed, work = tmp_path / "resumed", tmp_path / "resumed.work"
    # Imported here: run as torchrun's worker script, this module has no tests/ on its path.
    from helpers import interrupt_at_first_checkpoint

    # One thread, as here: the same arithmetic.
    returncode, err = interrupt_at_first_checkpoint(
        [*common, "--out", str(resumed)], work / "last.pt", env={"OMP_NUM_THREADS": "1"}
    )
    assert returncode == 130, err
    assert not resumed.exists()
    interrupted_at = read_checkpoint(work / "last.pt")["iteration"]
    assert 0 < interrupted_at < 16

    assert compress_main([*common, "--out", str(resumed)]) == 0  # resumes by default
    expected = read_checkpoint(tmp_path / "straight" / "model.pt")["state_dict"]
    got = read_checkpoint(resumed / "model.pt")["state_dict"]
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected if expected[k].is_floating_point())
    histories = [
        json.loads((out / "record.json").read_text())["details"]["history"] for out in (tmp_path / "straight", resumed)
    ]
    assert [h["iteration"] for h in histories[0]] == [h["iteration"] for h in histories[1]] == [10]


# --- the 2-process step --------------------------------------------------------------------------

DDP_STEPS = 2


def _ddp_worker(folder: Path, result: Path) -> None:
    """Two distillation steps on the global batches 0 and 1, in float64 (so that the comparison
    sees the arithmetic, not float32 rounding amplified by BatchNorm and Adam); rank 0 saves the
    student's parameters and buffers."""
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the adapters' initial weights
    config = tiny_config(loss={"feature_weight": 1.0, "truth_weight": 0.5})
    teacher, _ = load_model(folder / "teacher.pt")
    student, _ = load_model(folder / "student.pt")
    frames = training_frames(config, INPUT, folder / "cache")
    with _processes("cpu") as processes:
        distiller = Distiller(student.double(), teacher.double(), config, processes)
        for iteration in range(DDP_STEPS):
            distiller.step(frames, iteration)
        if processes.rank == 0:
            torch.save({k: v.detach().clone() for k, v in distiller.trained.state_dict().items()}, result)


def test_two_process_gloo_step_equals_the_one_process_step(models, tmp_path, monkeypatch):
    folder, _ = models
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _ddp_worker(folder, tmp_path / "one.pt")  # here, one process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    launch += ["--master_port", str(29500 + os.getpid() % 1000), __file__, str(folder), str(tmp_path / "two.pt")]
    done = subprocess.run(launch, env=env, timeout=300, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    initial = load_model(folder / "student.pt")[0].state_dict()
    assert one.keys() == two.keys()
    moved = 0
    for name, value in one.items():
        if value.is_floating_point() and name.startswith("student."):
            # float64 rounding, through Adam's first steps; one step moves weights by about lr = 5e-3
            assert torch.allclose(value, two[name], rtol=0, atol=1e-7), (name, (value - two[name]).abs().max())
            moved += not torch.allclose(value.float(), initial[name.removeprefix("student.")])
    assert moved > len(initial) // 2  # the steps changed the student: the comparison is not of two copies


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]), Path(sys.argv[2]))
