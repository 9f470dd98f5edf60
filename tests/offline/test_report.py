"""The report stage: every entry measured side by side (sizes, latencies, held-out mAP with intervals,
paired differences), the targets computed from the entries, report.md / report.json / report.png."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import builtin_rows, write_builtin_engine

from leaneye.errors import LeanEyeError
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye.vision.postprocess import DetectionSettings
from leaneye_compress.checkpoint import model_payload, save_checkpoint
from leaneye_compress.cli import main as compress_main
from leaneye_compress.cli.report import parse_entry
from leaneye_compress.frames import network_inputs
from leaneye_compress.models.detector import LeanDet, LeanDetConfig, count_parameters, gflops
from leaneye_compress.stages.report import (
    TARGETS,
    EagerDetector,
    ReportConfig,
    ReportEntry,
    evaluate_targets,
    report,
)
from leaneye_compress.stages.train import ScenesConfig

FRAME_SIZE = (256, 96)  # width, height of the held-out frames: small, for speed, with 8 labelled objects
CONFIG = ReportConfig(
    heldout=ScenesConfig(first_seed=9_000_000, sequences=2, frames_per_sequence=2, frame_step=3),
    frame_size=FRAME_SIZE,
    latency_frames=2,
    rounds=3,
    warmup=1,
    threads=1,
    bootstrap=20,
)
STAGE_KEYS = {
    "name",
    "role",
    "params",
    "gflops",
    "size_bytes",
    "gzip_bytes",
    "p50_ms",
    "p99_ms",
    "inference_p50_ms",
    "map50",
    "map50_interval",
    "map50_95",
    "map50_95_interval",
    "paired_vs_teacher",
    "engine_dir",
}


def tiny_checkpoint(path, width: float = 0.125, seed: int = 0):
    torch.manual_seed(seed)
    model = LeanDet(LeanDetConfig(num_classes=len(SCENE_CLASSES), width=width, input_height=64, input_width=128))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model_payload(model, SCENE_CLASSES))
    return path


@pytest.fixture
def constant_entries(tmp_path):
    """The PyTorch-eager teacher (a tiny random LeanDet) and three constant-output engines."""
    car = builtin_rows([((20, 40, 120, 80), 0, 0.9), ((200, 30, 260, 90), 1, 0.6)])
    teacher = write_builtin_engine(tmp_path / "teacher_engine", car)
    student = write_builtin_engine(tmp_path / "student_engine", car[:, :1])
    return [
        ReportEntry(
            "teacher fp32 (PyTorch eager)",
            checkpoint=tiny_checkpoint(tmp_path / "t" / "model.pt"),
            role="teacher_eager",
        ),
        ReportEntry("teacher fp32", engine_dir=teacher, role="teacher"),
        ReportEntry("student fp32", engine_dir=student, role="student"),
        ReportEntry("student int8", engine_dir=student, role="student_int8"),
        ReportEntry("another view", engine_dir=student),
    ]


def test_report_measures_every_entry_side_by_side(tmp_path, constant_entries):
    out = tmp_path / "report"
    record, skipped = report(CONFIG, constant_entries, out)
    assert not skipped and record["stage"] == "report"
    document = json.loads((out / "report.json").read_text())
    assert set(document) >= {"stages", "frames", "machine", "targets", "command"}
    stages = document["stages"]
    assert [stage["name"] for stage in stages] == [entry.name for entry in constant_entries]
    samples = CONFIG.rounds * CONFIG.latency_frames
    for stage in stages:
        assert STAGE_KEYS <= set(stage)
        assert 0 < stage["inference_p50_ms"] < stage["p50_ms"] <= stage["p99_ms"]
        assert stage["latency_samples"] == samples
        assert stage["map50_interval"][0] <= stage["map50"] <= stage["map50_interval"][1]
        assert stage["map50_95_interval"][0] <= stage["map50_95"] <= stage["map50_95_interval"][1]
        assert 0 < stage["gzip_bytes"] <= stage["size_bytes"] + 64
        assert stage["paired_vs_teacher"]["teacher"] == "teacher fp32"
    eager, teacher, student, int8, _ = stages
    # The deployable file: the checkpoint for eager, the engine's model.onnx otherwise.
    assert eager["size_bytes"] == constant_entries[0].checkpoint.stat().st_size and eager["engine_dir"] is None
    assert student["size_bytes"] == (constant_entries[2].engine_dir / "model.onnx").stat().st_size
    assert eager["params"] > 0 and eager["gflops"] > 0 and teacher["params"] is None
    # Against itself the paired difference is exactly 0; the student emits a subset of the teacher's boxes.
    assert teacher["paired_vs_teacher"]["difference"] == {"mAP50-95": 0.0, "mAP50": 0.0}
    assert teacher["paired_vs_teacher"]["interval95"] == {"mAP50-95": [0.0, 0.0], "mAP50": [0.0, 0.0]}
    assert student["paired_vs_teacher"]["difference"]["mAP50-95"] == pytest.approx(
        student["map50_95"] - teacher["map50_95"], abs=1e-9
    )
    assert document["frames"]["accuracy"]["frames"] == 4 and document["frames"]["accuracy"]["seeds"] == [
        9_000_000,
        9_000_001,
    ]
    assert document["frames"]["latency"]["frames"] == 2

    # Targets: ratios of the entries' own numbers, matched by role.
    targets = document["targets"]
    assert [name for name in targets] == [target.name for target in TARGETS]
    p5 = {check["measure"]: check for check in targets["P5"]["checks"]}
    assert p5["speed-up (p50_ms)"]["measured"] == pytest.approx(eager["p50_ms"] / int8["p50_ms"])
    assert p5["speed-up (p50_ms)"]["met"] == (eager["p50_ms"] / int8["p50_ms"] >= 10)
    p3 = {check["measure"]: check for check in targets["P3"]["checks"]}
    assert p3["speed-up (inference_p50_ms)"]["measured"] == pytest.approx(
        student["inference_p50_ms"] / int8["inference_p50_ms"]
    )
    assert p3["mAP50-95 drop (points)"]["measured"] == 0.0 and p3["mAP50-95 drop (points)"]["interval95"] == [0, 0]
    p4 = {check["measure"]: check for check in targets["P4"]["checks"]}
    assert p4["GFLOPs ratio"]["measured"] is None and targets["P4"]["met"] is None  # no checkpoints: no FLOPs
    assert p4["mAP50-95 drop (points)"]["measured"] == pytest.approx((teacher["map50_95"] - student["map50_95"]) * 100)
    # The same targets from report.json alone (point estimates, no intervals).
    again = evaluate_targets(stages)
    for name, target in targets.items():
        for check, recomputed in zip(target["checks"], again[name]["checks"]):
            assert recomputed["measured"] == pytest.approx(check["measured"], abs=1e-9)

    markdown = (out / "report.md").read_text()
    for entry in constant_entries:
        assert f"| {entry.name} |" in markdown
    assert "| P5 | student int8 vs teacher fp32 (PyTorch eager) |" in markdown and "leaneye-compress report" in markdown
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300

    # Same files and config: skipped; the record keeps the numbers.
    again_record, skipped = report(CONFIG, constant_entries, out)
    assert skipped and again_record == record


def test_targets_from_the_entries_numbers_and_what_is_missing():
    student = {"name": "s", "role": "student", "gflops": 1.0, "p50_ms": 5.0, "inference_p50_ms": 4.0, "map50_95": 0.5}
    int8 = {**student, "name": "q", "role": "student_int8", "p50_ms": 2.5, "inference_p50_ms": 1.6, "map50_95": 0.488}
    targets = evaluate_targets([student, int8])
    assert targets["P3"]["candidate"] == "q" and targets["P3"]["reference"] == "s"
    speed, drop = targets["P3"]["checks"]
    assert speed == {"measure": "speed-up (inference_p50_ms)", "measured": 2.5, "goal": ">= 2", "met": True}
    assert drop["measured"] == pytest.approx(1.2) and drop["met"] is False and targets["P3"]["met"] is False
    assert targets["P4"] == {
        "candidate": "student",
        "reference": "teacher",
        "met": None,
        "missing": "no entry with role teacher",
    }
    assert targets["P5"]["missing"] == "no entry with role teacher_eager"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda e, p: [ReportEntry("x", engine_dir=p / "missing")], r"entry 'x': engine directory .*missing not found"),
        (lambda e, p: [ReportEntry("x", checkpoint=p / "missing.pt")], r"entry 'x': checkpoint .*missing.pt not found"),
        (lambda e, p: [ReportEntry("x")], "entry 'x': neither an engine directory nor a checkpoint"),
        (lambda e, p: [e[1], e[1]], "entry 'teacher fp32': named twice"),
        (
            lambda e, p: [e[1], ReportEntry("y", engine_dir=e[1].engine_dir, role="teacher")],
            "role teacher given to more",
        ),
        (lambda e, p: [ReportEntry("y", engine_dir=e[1].engine_dir, role="boss")], "role 'boss'; expected one of"),
        (lambda e, p: [ReportEntry("y", checkpoint=e[0].checkpoint, role="student")], "role student needs an engine"),
        (
            lambda e, p: [
                ReportEntry("y", engine_dir=e[1].engine_dir, checkpoint=e[0].checkpoint, role="teacher_eager")
            ],
            "give no engine",
        ),
        (lambda e, p: [], "no entries"),
    ],
)
def test_bad_entries_are_one_line_errors(tmp_path, constant_entries, change, expected):
    with pytest.raises(LeanEyeError, match=expected) as raised:
        report(CONFIG, change(constant_entries, tmp_path), tmp_path / "report")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "report").exists()


def test_a_checkpoint_that_is_not_the_engines_network_leaves_nothing(tmp_path, constant_entries):
    entry = ReportEntry("teacher fp32", constant_entries[1].engine_dir, constant_entries[0].checkpoint, "teacher")
    with pytest.raises(LeanEyeError, match=r"checkpoint .* \(input 64x128, .*\) is not the network of .*input 96x320"):
        report(CONFIG, [entry], tmp_path / "report")
    assert not (tmp_path / "report").exists() and list(tmp_path.glob("report*")) == []


def test_held_out_seeds_a_stage_used_are_refused(tmp_path, constant_entries):
    eager = constant_entries[0]
    # A distillation run whose frames came from the report's held-out seeds.
    record = {"stage": "distill", "config": {"frames": {"scenes": {"first_seed": 9_000_001, "sequences": 4}}}}
    (eager.checkpoint.parent / "record.json").write_text(json.dumps(record))
    with pytest.raises(
        LeanEyeError, match=r"record.json: config frames.scenes used scene seeds 9000001..9000004, which overlap"
    ):
        report(CONFIG, [eager], tmp_path / "report")
    # A training config's own held-out set is the report's: not a use.
    record["config"] = {
        "train": {"first_seed": 1000, "sequences": 3},
        "heldout": {"first_seed": 9_000_000, "sequences": 60},
    }
    (eager.checkpoint.parent / "record.json").write_text(json.dumps(record))
    report(CONFIG, [eager], tmp_path / "report")
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [used["key"] for used in document["frames"]["stage_scene_ranges"]] == ["train"]
    assert (
        document["stages"][0]["paired_vs_teacher"]["difference"]["mAP50"] == 0.0
    )  # the eager teacher is the reference


def test_held_out_frames_without_objects_are_refused(tmp_path, constant_entries):
    config = dataclasses.replace(CONFIG, frame_size=(160, 64))  # every object under 25 px: ignore regions only
    with pytest.raises(LeanEyeError, match=r"^heldout: the 4 held-out frames hold no labelled object .*160x64"):
        report(config, constant_entries[1:2], tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_cli_entries(tmp_path, capsys):
    entry = parse_entry(["student int8", "engine=runs/int8", "checkpoint=runs/s/model.pt", "role=student_int8"])
    assert entry == ReportEntry("student int8", Path("runs/int8"), Path("runs/s/model.pt"), "student_int8")
    assert parse_entry(["teacher (PyTorch eager)", "checkpoint=t.pt"]) == ReportEntry(
        "teacher (PyTorch eager)", checkpoint=Path("t.pt")
    )
    with pytest.raises(
        LeanEyeError, match=r"--entry s: 'engines=x' is not KEY=VALUE with KEY one of engine, checkpoint, role"
    ):
        parse_entry(["s", "engines=x"])
    with pytest.raises(LeanEyeError, match="--entry s: role given twice"):
        parse_entry(["s", "role=student", "role=teacher"])
    code = compress_main(["report", "--entry", "s", f"engine={tmp_path / 'nowhere'}", "--out", str(tmp_path / "r")])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "entry 's': engine directory" in line and "not found" in line


def test_cli_report_with_a_config(tmp_path, constant_entries, capsys):
    config = tmp_path / "report.yaml"
    config.write_text(
        "heldout: {first_seed: 9000000, sequences: 2, frames_per_sequence: 2, frame_step: 3}\n"
        "frame_size: [256, 96]\nlatency_frames: 1\nrounds: 2\nwarmup: 0\nthreads: 1\nbootstrap: 10\n"
    )
    eager, teacher = constant_entries[:2]
    argv = ["report", "--entry", eager.name, f"checkpoint={eager.checkpoint}", "role=teacher_eager"]
    argv += ["--entry", teacher.name, f"engine={teacher.engine_dir}", "role=teacher"]
    assert compress_main([*argv, "--config", str(config), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "| teacher fp32 | onnxruntime fp32 |" in printed and f"wrote {tmp_path / 'r'}" in printed
    document = json.loads((tmp_path / "r" / "report.json").read_text())
    assert document["frames"]["latency"]["rounds"] == 2 and document["stages"][1]["latency_samples"] == 2
    assert f"--config {config}" in document["command"]
    config.write_text("rounds: 2\nthread: 1\n")
    assert compress_main([*argv, "--config", str(config), "--out", str(tmp_path / "r2")]) == 2
    assert "unknown key thread; the closest valid key is threads" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_leandets_and_the_eager_teacher(tmp_path):
    """Tiny LeanDets exported by the export stage: parameters, GFLOPs and P4's FLOPs ratio from their
    checkpoints; the PyTorch-eager path detects what the engine of the same checkpoint detects."""
    from leaneye.detector import Detector
    from leaneye.scenes.render import SceneSequence
    from leaneye_compress.checkpoint import load_model
    from leaneye_compress.stages.export import export_engine

    teacher_pt = tiny_checkpoint(tmp_path / "teacher" / "model.pt", width=0.25)
    student_pt = tiny_checkpoint(tmp_path / "student" / "model.pt", width=0.125, seed=1)
    export_engine(teacher_pt, tmp_path / "teacher_engine")
    export_engine(student_pt, tmp_path / "student_engine")
    entries = [
        ReportEntry("teacher fp32 (PyTorch eager)", checkpoint=teacher_pt, role="teacher_eager"),
        ReportEntry("teacher fp32", tmp_path / "teacher_engine", teacher_pt, "teacher"),
        ReportEntry("student fp32", tmp_path / "student_engine", student_pt, "student"),
        ReportEntry("student int8", tmp_path / "student_engine", student_pt, "student_int8"),
    ]
    report(CONFIG, entries, tmp_path / "report")
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    eager, teacher, student, _ = document["stages"]
    teacher_model, student_model = load_model(teacher_pt)[0], load_model(student_pt)[0]
    assert eager["params"] == teacher["params"] == count_parameters(teacher_model)
    assert teacher["gflops"] == pytest.approx(gflops(teacher_model)) and student["params"] == count_parameters(
        student_model
    )
    p4 = {check["measure"]: check for check in document["targets"]["P4"]["checks"]}
    assert p4["GFLOPs ratio"]["measured"] == pytest.approx(gflops(student_model) / gflops(teacher_model))
    assert p4["GFLOPs ratio"]["met"] is True  # half the width: about a quarter of the FLOPs
    # Eager and ONNX Runtime run the same network: the same accuracy on the same frames.
    assert eager["map50_95"] == pytest.approx(teacher["map50_95"], abs=1e-3)

    frame = SceneSequence(9_000_000, FRAME_SIZE).frame(0).image
    settings = {"conf": 0.001, "iou": 0.5, "max_detections": 1000}  # a random network scores low
    eager_detector = EagerDetector(teacher_model, SCENE_CLASSES, DetectionSettings(**settings))
    with Detector.from_engine(tmp_path / "teacher_engine", threads=1, **settings) as detector:
        expected = detector.detect(frame)
        tensor, _ = eager_detector.preprocess(frame)
        # The node's Python preprocessing gives the runtime's tensor, and the forward pass its outputs.
        np.testing.assert_array_equal(tensor.numpy(), network_inputs([frame], detector.manifest))
        with torch.no_grad():
            eager_output = eager_detector.network(tensor).numpy()
        np.testing.assert_allclose(eager_output, detector.backend.infer(tensor.numpy())[0], atol=1e-4)
    found = eager_detector.detect(frame)
    # A random network's scores nearly tie, so compare what was kept, not its order.
    assert 0 < len(found) == len(expected) < settings["max_detections"]
    np.testing.assert_allclose(np.sort(found.scores), np.sort(expected.scores), atol=1e-4)
    assert set(found.timings) == {"preprocess", "inference", "postprocess"}
