"""`leaneye-compress build`: one YAML config drives the whole chain, teacher to INT8 engine and report.

    leaneye-compress build --config compression/configs/default.yaml --out runs/build [--from STAGE]

Stages, in order, each a function from artifacts to artifacts (stages/*.py) writing one folder of
OUT with its record.json:

    prune      teacher checkpoint            -> prune/model.pt
    distill    teacher + pruned checkpoint   -> distill/model.pt
    export     the three checkpoints         -> engines/{teacher,pruned,student} (ONNX Runtime FP32)
    calibrate  engines/student               -> calibrate/ (INT8 engine, TensorRT QDQ, range cache)
    qad        distill/model.pt + calibrate/ -> qad/ (only with `qad.enabled`)
    report     all of the above              -> report/ (report.md, report.json, report.png)

A stage whose inputs and config are unchanged is skipped (its record says so); `--from STAGE`
reruns that stage and every later one. Ctrl-C leaves every finished stage in place and the
interrupted one as it was before, so the next run resumes at the first unfinished stage (and
distillation within itself, from its last checkpoint).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from leaneye.atomic import atomic_path
from leaneye.errors import LeanEyeError

from .artifacts import run_stage
from .config import load_config
from .stages import BUILD_STAGES
from .stages.calibrate import CalibrateConfig, calibrate
from .stages.distill import DistillConfig, distill
from .stages.prune import PruneConfig, prune
from .stages.qad import QADConfig, qad
from .stages.report import ReportConfig, ReportEntry, report

DEFAULT_TEACHER = Path(__file__).resolve().parent / "default_model" / "model.pt"


@dataclass(frozen=True)
class QADStage:
    enabled: bool = False
    config: QADConfig = QADConfig()


@dataclass(frozen=True)
class BuildConfig:
    # The teacher checkpoint: a path (relative to the config file's folder or absolute) or "default",
    # the committed default model.
    teacher: str = "default"
    prune: PruneConfig = PruneConfig()
    distill: DistillConfig = DistillConfig()
    calibrate: CalibrateConfig = CalibrateConfig()
    qad: QADStage = QADStage()
    report: ReportConfig = ReportConfig()


def teacher_path(config: BuildConfig, config_file: Path) -> Path:
    if config.teacher == "default":
        return DEFAULT_TEACHER
    path = Path(config.teacher)
    path = path if path.is_absolute() else Path(config_file).parent / path
    if not path.is_file():
        raise LeanEyeError(f"{config_file}: teacher {config.teacher}: checkpoint not found ({path})")
    return path


def export_stage(checkpoint: Path, out: Path, force: bool = False) -> tuple[dict, bool]:
    """A checkpoint's FP32 ONNX Runtime engine, as a stage: skipped while the checkpoint is unchanged."""
    from .stages.export import OPSET, export_engine

    def produce(folder: Path) -> dict:
        exported = export_engine(checkpoint, folder, force=True)
        return {"metrics": {"max_abs_difference_vs_torch": exported["max_abs_difference_vs_torch"]}}

    return run_stage(
        "export", out, {"checkpoint": checkpoint}, {"opset": OPSET}, produce, force, ("leaneye-compress", "torch")
    )


def _calibrated_name(record: dict) -> str:
    # Calibration may choose FP32 (no INT8 configuration both accurate enough and faster).
    precision = record["metrics"]["precision"]
    return "student int8" if precision == "int8" else f"student after calibrate ({precision} chosen)"


def _say(stage: str, record: dict, skipped: bool, out: Path) -> None:
    state = "up to date, skipped" if skipped else f"done in {record.get('wall_s', 0):.0f} s"
    print(f"[build] {stage}: {state} -> {out}", file=sys.stderr, flush=True)


def build(config: BuildConfig, config_file: Path, out: Path, rerun_from: str | None = None) -> dict:
    """Run every stage into `out`; returns {stage: record}."""
    if rerun_from is not None and rerun_from not in BUILD_STAGES:
        raise LeanEyeError(f"--from {rerun_from}: expected one of {', '.join(BUILD_STAGES)}")
    first_forced = BUILD_STAGES.index(rerun_from) if rerun_from else len(BUILD_STAGES)
    out = Path(out)
    teacher = teacher_path(config, config_file)
    records: dict = {}

    def step(stage: str, path: Path, run) -> dict:
        record, skipped = run(BUILD_STAGES.index(stage) >= first_forced)
        _say(stage, record, skipped, path)
        return record

    records["prune"] = step("prune", out / "prune", lambda f: prune(config.prune, teacher, out / "prune", force=f))
    pruned = out / "prune" / "model.pt"
    records["distill"] = step(
        "distill", out / "distill", lambda f: distill(config.distill, teacher, pruned, out / "distill", force=f)
    )
    student = out / "distill" / "model.pt"
    engines = out / "engines"
    for name, checkpoint in (("teacher", teacher), ("pruned", pruned), ("student", student)):
        records[f"export {name}"] = step(
            "export", engines / name, lambda f, c=checkpoint, n=name: export_stage(c, engines / n, force=f)
        )
    records["calibrate"] = step(
        "calibrate",
        out / "calibrate",
        lambda f: calibrate(config.calibrate, engines / "student", out / "calibrate", force=f),
    )
    entries = [
        ReportEntry(name="teacher fp32 (PyTorch eager)", checkpoint=teacher, role="teacher_eager"),
        ReportEntry(name="teacher fp32", engine_dir=engines / "teacher", checkpoint=teacher, role="teacher"),
        ReportEntry(name="pruned fp32", engine_dir=engines / "pruned", checkpoint=pruned),
        ReportEntry(name="student fp32", engine_dir=engines / "student", checkpoint=student, role="student"),
        ReportEntry(
            name=_calibrated_name(records["calibrate"]),
            engine_dir=out / "calibrate",
            checkpoint=student,
            role="student_int8",
        ),
    ]
    if config.qad.enabled:
        records["qad"] = step(
            "qad",
            out / "qad",
            lambda f: qad(config.qad.config, student, teacher, out / "calibrate", out / "qad", force=f),
        )
        entries.append(ReportEntry(name="student int8 + QAD", engine_dir=out / "qad", checkpoint=student))
    records["report"] = step(
        "report", out / "report", lambda f: report(config.report, entries, out / "report", force=f)
    )
    return records


def load_build_config(path: Path) -> BuildConfig:
    return load_config(BuildConfig, path)


# What `--publish` copies out of a build folder: the student and how it was made and measured.
PUBLISHED = {
    "model.pt": "distill/model.pt",
    "record.json": "distill/record.json",
    "report.md": "report/report.md",
    "report.json": "report/report.json",
    "report.png": "report/report.png",
}


def publish_student(out: Path, dest: Path) -> None:
    """Copy the built student and its report from the build folder `out` into `dest`, atomically."""
    missing = [source for source in PUBLISHED.values() if not (Path(out) / source).is_file()]
    if missing:
        raise LeanEyeError(f"--publish: {out} lacks {', '.join(missing)}; the build has not finished")
    with atomic_path(dest, force=True, is_dir=True) as folder:
        for name, source in PUBLISHED.items():
            shutil.copyfile(Path(out) / source, folder / name)
