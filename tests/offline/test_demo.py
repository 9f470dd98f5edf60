"""`make demo` (leaneye_compress.demo): its steps on a small untrained model, the cached scene bag,
and the one-line error without the default model."""

from __future__ import annotations

import json
import shlex

import pytest

from leaneye.cli import main as leaneye_main
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye_compress import demo
from leaneye_compress.checkpoint import model_payload, save_checkpoint
from leaneye_compress.models.detector import LeanDet, preset_config


def test_without_the_default_model_it_says_how_to_train_it(tmp_path, capsys):
    work, engine = tmp_path / "demo", tmp_path / "engine"
    assert (
        demo.main(
            ["--checkpoint", str(tmp_path / "absent" / "model.pt"), "--work-dir", str(work), "--engine", str(engine)]
        )
        == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "model.pt" in line and "make train-default" in line
    assert not work.exists() and not engine.exists()


def test_without_the_student_it_says_how_to_build_it(tmp_path, capsys):
    checkpoint = tmp_path / "model" / "model.pt"
    save_checkpoint(
        checkpoint, model_payload(LeanDet(preset_config("student", len(SCENE_CLASSES), 96, 320)), SCENE_CLASSES)
    )
    work, engine = tmp_path / "demo", tmp_path / "engine"
    argv = ["--checkpoint", str(checkpoint), "--student", str(tmp_path / "absent.pt")]
    assert demo.main([*argv, "--work-dir", str(work), "--engine", str(engine)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "absent.pt" in line and "make compress-default" in line
    assert not work.exists() and not engine.exists()


def test_scene_bag_is_reused_only_while_its_parameters_are_unchanged(tmp_path):
    scenes = tmp_path / "scenes"
    parameters, reused = demo.ensure_scenes(scenes, frames=2, seed=7)
    assert not reused and parameters["seed"] == 7 and len(parameters["generator_sha256"]) == 64
    bag_file = next((scenes / "bag").glob("*.mcap"))
    written = bag_file.stat().st_mtime_ns
    assert demo.ensure_scenes(scenes, frames=2, seed=7) == (parameters, True)
    assert bag_file.stat().st_mtime_ns == written
    changed, reused = demo.ensure_scenes(scenes, frames=3, seed=7)
    assert not reused and changed["frames"] == 3
    assert len(json.loads((scenes / "annotations.json").read_text())["images"]) == 3


@pytest.mark.slow
def test_demo_end_to_end_on_a_small_model(tmp_path, capsys):
    checkpoint, student = tmp_path / "model" / "model.pt", tmp_path / "student" / "model.pt"
    model = LeanDet(preset_config("student", len(SCENE_CLASSES), 96, 320))
    save_checkpoint(checkpoint, model_payload(model, SCENE_CLASSES))
    save_checkpoint(
        student, model_payload(LeanDet(preset_config("student", len(SCENE_CLASSES), 96, 320)), SCENE_CLASSES)
    )
    work, engine = tmp_path / "demo", tmp_path / "engine"
    assert (
        demo.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--student",
                str(student),
                "--work-dir",
                str(work),
                "--engine",
                str(engine),
                "--frames",
                "3",
                "--bootstrap",
                "20",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert all(f"[{step}/5]" in captured.err for step in range(1, 6))
    assert "frames/s" in captured.out and "mAP50" in captured.out

    report = json.loads((work / "report.json").read_text())
    assert report["replay"]["frames"] == 3 and report["replay"]["evaluation"]["images"] == 3
    assert report["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert (engine / "manifest.json").is_file() and (work / "detections" / "metadata.yaml").is_file()
    # The teacher, the student and the student's INT8 engine, replayed through the same bag.
    assert [row["precision"] for row in report["comparison"]][:2] == ["fp32", "fp32"]
    assert report["comparison"][2]["precision"] == report["calibration"]["precision"]
    assert all(row["p50_ms"] > 0 and row["map50_95"] is not None for row in report["comparison"])
    assert (work / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "detections-student-int8" / "metadata.yaml").is_file()
    markdown = (work / "report.md").read_text()
    for expected in (
        "| total |",
        "Throughput:",
        "mAP50 ",
        "by object size: small",
        "M parameters",
        "## Teacher, student and INT8 student on the same bag",
        "## Reproduce",
        report["demo_command"],
        *report["commands"],
    ):
        assert expected in markdown
    assert (
        report["demo_command"].startswith("python -m leaneye_compress.demo") and "--frames 3" in report["demo_command"]
    )

    # The report's commands redo the steps: the scenes command regenerates the same frames, the
    # replay command (run here into another folder) replays them with the same settings.
    split = [shlex.split(command) for command in report["commands"]]
    assert [command[:2] for command in split] == [
        ["leaneye", "scenes"],
        ["leaneye-compress", "export"],
        ["leaneye-compress", "export"],
        ["leaneye-compress", "calibrate"],
        ["leaneye", "replay"],
        ["leaneye", "replay"],
        ["leaneye", "replay"],
    ]
    scenes_command, replay_command = split[0], split[4]
    again = tmp_path / "again"
    scenes_command[scenes_command.index("--out") + 1] = str(again)
    assert leaneye_main(scenes_command[1:]) == 0
    assert (again / "annotations.json").read_bytes() == (work / "scenes" / "annotations.json").read_bytes()
    replay_command[replay_command.index("--out") + 1] = str(tmp_path / "replayed")
    assert leaneye_main([*replay_command[1:], "--json", str(tmp_path / "replayed.json")]) == 0
    replayed = json.loads((tmp_path / "replayed.json").read_text())
    assert replayed["evaluation"]["bootstrap_resamples"] == 20
    assert replayed["detections"] == report["replay"]["detections"]
