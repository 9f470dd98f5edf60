"""`make demo` (`python -m leaneye_compress.demo`): the mission end to end on the embedded default.

1. scenes: 100 generated driving frames as a rosbag2 bag with ground truth, in runs/demo/scenes.
   Seed 424242 is used by nothing else (training and distillation use seeds 1000-1249,
   calibration 8000000 and up, held-out evaluation 9000000 and up). The bag is reused while its
   parameters and the generator's source are unchanged (runs/demo/scenes.json records both).
2. export: the default model (the teacher, compression/leaneye_compress/default_model/model.pt)
   to the ONNX Runtime engine engines/default, and the committed student (pruned and distilled from
   it by `make compress-default`, compression/leaneye_compress/default_student/model.pt) to
   runs/demo/engines/student, on every run: it takes seconds, and the engines can then never lag
   behind the checkpoints.
3. calibrate: the student's INT8 engine, calibrated now from generated frames
   (compression/configs/demo_calibrate.yaml; seconds) into runs/demo/engines/student-int8.
4. replay: `leaneye replay` of the same bag through each of the three engines: detections,
   per-stage latency, throughput, and COCO mAP against the bag's ground truth (shared/EVAL.md,
   generated scenes). The teacher's output bag goes to runs/demo/detections, the others' beside it.
5. report: runs/demo/report.md for people (with the commands that reproduce it), report.json for
   tools and report.png (accuracy against latency).

Without the default model it stops at once and says to run `make train-default`; without the
student, `make compress-default`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from leaneye.atomic import atomic_write_text
from leaneye.cli import run_command
from leaneye.errors import LeanEyeError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default_model" / "model.pt"
DEFAULT_STUDENT = Path(__file__).resolve().parent / "default_student" / "model.pt"
DEMO_CALIBRATION = Path(__file__).resolve().parents[1] / "configs" / "demo_calibrate.yaml"
DEFAULT_WORK_DIR = Path("runs/demo")
DEFAULT_ENGINE = Path("engines/default")
DEMO_FRAMES = 100
DEMO_SEED = 424242
FRAME_SIZE = (1224, 370)  # KITTI's, like the default model's training frames
RATE_HZ = 10.0
DEMO_BOOTSTRAP = 1000
STEPS = 5


def _step(number: int, text: str) -> None:
    print(f"[{number}/{STEPS}] {text}", file=sys.stderr, flush=True)


def _display(path: Path) -> str:
    """`path` relative to the working directory when it lies below it: commands stay copyable."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def generator_sha256() -> str:
    """One digest of the scene generator's source: a changed generator means a new bag."""
    import leaneye.scenes

    digest = hashlib.sha256()
    for path in sorted(Path(leaneye.scenes.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def scene_parameters(frames: int, seed: int) -> dict:
    return {
        "frames": frames,
        "seed": seed,
        "size": list(FRAME_SIZE),
        "rate_hz": RATE_HZ,
        "storage": "mcap",
        "generator_sha256": generator_sha256(),
    }


def ensure_scenes(scenes_dir: Path, frames: int, seed: int) -> tuple[dict, bool]:
    """The demo's bag folder `scenes_dir`/bag, generated unless one with the same parameters is there.

    Returns (parameters, reused).
    """
    from leaneye.scenes.dataset import generate_scene_dataset

    parameters = scene_parameters(frames, seed)
    record = scenes_dir.with_name(scenes_dir.name + ".json")
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == parameters and (scenes_dir / "bag" / "metadata.yaml").is_file():
        return parameters, True
    generate_scene_dataset(scenes_dir, frames, seed, FRAME_SIZE, RATE_HZ, storage="mcap", force=True)
    atomic_write_text(record, json.dumps(parameters, indent=2) + "\n")
    return parameters, False


def model_facts(checkpoint: Path) -> dict:
    """Size of the network: parameters, GFLOPs per frame and its input, from the checkpoint itself."""
    from .checkpoint import load_model
    from .models.detector import count_parameters, gflops

    model, data = load_model(checkpoint)
    config = model.config
    return {
        "architecture": f"LeanDet width {config.width:g}, depth {config.depth:g}",
        "parameters": count_parameters(model),
        "gflops": round(gflops(model), 3),
        "input_hw": [config.input_height, config.input_width],
        "classes": list(data["class_names"]),
    }


def demo_paths(work_dir: Path, engine_dir: Path) -> dict[str, Path]:
    """Where each step writes: the bag, the student's two engines and the three output bags."""
    return {
        "scenes": work_dir / "scenes",
        "student": work_dir / "engines" / "student",
        "student-int8": work_dir / "engines" / "student-int8",
        "detections": work_dir / "detections",
        "detections-student": work_dir / "detections-student",
        "detections-student-int8": work_dir / "detections-student-int8",
    }


def commands(
    checkpoint: Path,
    student: Path,
    calibration: Path,
    paths: dict[str, Path],
    engine_dir: Path,
    frames: int,
    seed: int,
    threads: int,
    bootstrap: int,
) -> list[str]:
    """The commands that redo each step by hand (same files, same numbers)."""
    width, height = FRAME_SIZE
    quote = shlex.quote

    def shown(path: Path) -> str:
        return quote(_display(path))

    def replay(engine: Path, out: Path) -> str:
        return " ".join(
            [
                f"leaneye replay {shown(paths['scenes'] / 'bag')} --engine {shown(engine)} --out {shown(out)}",
                *_replay_options(threads, bootstrap),
                "--force",
            ]
        )

    return [
        f"leaneye scenes --frames {frames} --seed {seed} --size {width}x{height} --rate {RATE_HZ:g} "
        f"--out {shown(paths['scenes'])} --force",
        f"leaneye-compress export {shown(checkpoint)} --out {shown(engine_dir)} --force",
        f"leaneye-compress export {shown(student)} --out {shown(paths['student'])} --force",
        f"leaneye-compress calibrate --engine {shown(paths['student'])} --config {shown(calibration)} "
        f"--out {shown(paths['student-int8'])} --force",
        replay(engine_dir, paths["detections"]),
        replay(paths["student"], paths["detections-student"]),
        replay(paths["student-int8"], paths["detections-student-int8"]),
    ]


def _replay_options(threads: int, bootstrap: int) -> list[str]:
    return [
        f"{flag} {value}"
        for flag, value, default in (("--threads", threads, 0), ("--bootstrap", bootstrap, DEMO_BOOTSTRAP))
        if value != default
    ]


def demo_command(
    checkpoint: Path,
    work_dir: Path,
    engine_dir: Path,
    frames: int,
    seed: int,
    threads: int,
    bootstrap: int,
    student: Path = DEFAULT_STUDENT,
) -> str:
    """`make demo`, or the module call with the arguments that differ from its defaults."""
    given = [
        ("--checkpoint", checkpoint, DEFAULT_CHECKPOINT),
        ("--student", student, DEFAULT_STUDENT),
        ("--work-dir", work_dir, DEFAULT_WORK_DIR),
        ("--engine", engine_dir, DEFAULT_ENGINE),
    ]
    options = [
        f"{flag} {shlex.quote(_display(path))}" for flag, path, default in given if path.resolve() != default.resolve()
    ]
    options += [
        f"{flag} {value}"
        for flag, value, default in (("--frames", frames, DEMO_FRAMES), ("--seed", seed, DEMO_SEED))
        if value != default
    ]
    options += _replay_options(threads, bootstrap)
    return " ".join(["python -m leaneye_compress.demo", *options]) if options else "make demo"


def _metric(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(interval) -> str:
    return "" if not interval or interval[0] is None else f" (95 % interval {interval[0]:.3f}-{interval[1]:.3f})"


def comparison_markdown(report: dict) -> list[str]:
    """The teacher, the student and its INT8 engine on the same bag, and what the calibration chose."""
    rows = report["comparison"]
    teacher = rows[0]
    lines = [
        "## Teacher, student and INT8 student on the same bag",
        "",
        "Each engine replayed the bag above in turn (one after the other, same process and threads); latency is",
        "the replay's per-frame total (decode to message) and inference alone, p50. Accuracy by the same protocol.",
        "",
        "| engine | precision | parameters | GFLOPs | file MB | p50 total ms | p50 inference ms | speed-up | "
        "mAP50-95 (95 % interval) | mAP50 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['precision']} | {row['parameters'] / 1e6:.2f} M | {row['gflops']:.2f} | "
            f"{row['model_bytes'] / 1e6:.1f} | {row['p50_ms']:.2f} | {row['inference_p50_ms']:.2f} | "
            f"{teacher['p50_ms'] / row['p50_ms']:.2f}x | {_metric(row['map50_95'])}{_interval(row['map50_95_interval'])}"
            f" | {_metric(row['map50'])} |"
        )
    calibration = report["calibration"]
    lines += [
        "",
        f"The INT8 engine was calibrated during this run ({calibration['config']}); the calibration stage's choice: "
        f"{calibration['chosen']} ({calibration['precision']}, {calibration['speedup_vs_fp32']:.2f}x the FP32 student's "
        f"inference in its own measurement, {calibration['float_layers']} of {calibration['layers']} layers in float). "
        "Plot: report.png.",
        "",
    ]
    return lines


def report_markdown(report: dict) -> str:
    replay, model, engine = report["replay"], report["model"], report["engine"]
    scenes = report["scenes"]
    latency = replay["latency"]
    lines = [
        "# LeanEye demo report",
        "",
        f"Created {report['created_utc']} on {report['machine']}, in {report['wall_s']['total']:.0f} s.",
        "",
        "## What was run",
        "",
        f"- Bag: {scenes['frames']} generated driving frames ({scenes['size'][0]}x{scenes['size'][1]}, "
        f"{scenes['rate_hz']:g} Hz, seed {scenes['seed']}: used by no training or held-out set), "
        f"`{report['paths']['bag']}`" + (" (reused)" if report["scenes_reused"] else ""),
        f"- Model: `{report['paths']['checkpoint']}` (sha256 {report['checkpoint_sha256'][:16]}...), "
        f"{model['architecture']}, {model['parameters'] / 1e6:.2f} M parameters, {model['gflops']:.2f} GFLOPs "
        f"per {model['input_hw'][1]}x{model['input_hw'][0]} input",
        f"- Engine: `{report['paths']['engine']}`, {engine['backend']} {engine['precision']}, "
        f"{engine['model_bytes'] / 1e6:.1f} MB ONNX",
        f"- Published detections: score >= {replay['settings']['published']['conf']}, NMS IoU "
        f"{replay['settings']['published']['iou']}; output bag `{report['paths']['detections']}`",
        "",
        "## Results",
        "",
        f"{replay['frames']} frames replayed, {replay['bad_frames']} bad frames skipped, "
        f"{replay['detections']} detections published.",
        "",
        "| stage (ms) | p50 | p90 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for stage, stats in latency["stages_ms"].items():
        lines.append(f"| {stage} | {stats['p50']:.2f} | {stats['p90']:.2f} | {stats['p99']:.2f} | {stats['max']:.2f} |")
    lines += [
        "",
        f"Throughput: {latency['throughput_fps']:.1f} frames/s ({latency['frames']} frames in "
        f"{latency['wall_s']:.2f} s, reading the bag and writing the output included).",
        "",
    ]
    evaluation = replay["evaluation"]
    if evaluation is not None:
        run = replay["settings"]["scored"]
        lines += [
            f"Accuracy (shared/EVAL.md, generated scenes: score >= {run['conf']}, NMS IoU {run['iou']}, at most "
            f"{run['max_detections']} per frame; {evaluation['images']} frames, {evaluation['objects']} objects, "
            f"{evaluation['bootstrap_resamples']} bootstrap resamples):",
            "",
            f"- mAP50 {_metric(evaluation['mAP50'])}{_interval(evaluation['mAP50_interval95'])}",
            f"- mAP50-95 {_metric(evaluation['mAP50-95'])}{_interval(evaluation['mAP50-95_interval95'])}",
            "- mAP50-95 by object size: "
            + ", ".join(f"{size} {_metric(ap)}" for size, ap in evaluation["AP_by_size"].items()),
            "- AP50 per class: "
            + ", ".join(f"{name} {_metric(ap)}" for name, ap in evaluation["AP50_per_class"].items()),
        ]
        if report.get("training_heldout"):
            held = report["training_heldout"]
            lines.append(
                f"- For comparison, the model's held-out evaluation at training time: mAP50 {_metric(held['mAP50'])}"
                f"{_interval(held.get('mAP50_interval95'))} on {held['images']} frames"
            )
        lines.append("")
    lines += comparison_markdown(report)
    lines += [
        "## Reproduce",
        "",
        f"    {report['demo_command']}",
        "",
        "or step by step (in the repository root, with `.venv/bin` on PATH):",
        "",
    ]
    lines += [f"    {command}" for command in report["commands"]]
    return "\n".join(lines) + "\n"


def _comparison_row(name: str, checkpoint: Path, engine_dir: Path, replayed) -> dict:
    """One engine's line of the comparison: its network, file, latency on the bag and accuracy."""
    from leaneye.engine import load_manifest, model_file

    manifest = load_manifest(engine_dir)
    facts = model_facts(checkpoint)
    latency = replayed.latency.as_dict()["stages_ms"]
    evaluation = replayed.evaluation.to_dict() if replayed.evaluation is not None else {}
    return {
        "name": name,
        "engine": _display(engine_dir),
        "precision": manifest.precision,
        "parameters": facts["parameters"],
        "gflops": facts["gflops"],
        "model_bytes": model_file(engine_dir, manifest).stat().st_size,
        "p50_ms": latency["total"]["p50"],
        "inference_p50_ms": latency["inference"]["p50"],
        "throughput_fps": replayed.latency.throughput_fps,
        "map50_95": evaluation.get("mAP50-95"),
        "map50_95_interval": evaluation.get("mAP50-95_interval95"),
        "map50": evaluation.get("mAP50"),
        "map50_interval": evaluation.get("mAP50_interval95"),
    }


def run_demo(
    checkpoint: Path,
    work_dir: Path,
    engine_dir: Path,
    frames: int = DEMO_FRAMES,
    seed: int = DEMO_SEED,
    threads: int = 0,
    bootstrap: int = DEMO_BOOTSTRAP,
    student: Path = DEFAULT_STUDENT,
    calibration: Path = DEMO_CALIBRATION,
) -> dict:
    """The five steps; returns the report written to `work_dir`/report.json."""
    import onnxruntime

    from leaneye.engine import load_manifest, model_file
    from leaneye.replay import ReplayOptions, replay_bag

    from .artifacts import read_record
    from .config import load_config
    from .stages.calibrate import CalibrateConfig, calibrate
    from .stages.export import export_engine
    from .stages.report import plot

    if not checkpoint.is_file():
        raise LeanEyeError(
            f"{_display(checkpoint)}: the default model is missing; run `make train-default` first "
            "(about 40 minutes on 2 CPU cores)"
        )
    if not student.is_file():
        raise LeanEyeError(
            f"{_display(student)}: the student is missing; run `make compress-default` first "
            "(prunes, distills and calibrates the default model)"
        )
    if frames < 1:
        raise LeanEyeError(f"--frames: expected a positive number, got {frames}")
    calibrate_config = load_config(CalibrateConfig, calibration)
    began = time.perf_counter()
    wall: dict = {}
    paths = demo_paths(work_dir, engine_dir)

    _step(1, f"scenes: {frames} frames, seed {seed} -> {_display(paths['scenes'])}")
    scenes, reused = ensure_scenes(paths["scenes"], frames, seed)
    if reused:
        print(f"      reusing {_display(paths['scenes'])} (same parameters and generator)", file=sys.stderr)
    wall["scenes"] = time.perf_counter() - began

    _step(2, f"export: teacher and student -> {_display(engine_dir)}, {_display(paths['student'])} (seconds)")
    started = time.perf_counter()
    exported = export_engine(checkpoint, engine_dir, force=True)
    export_engine(student, paths["student"], force=True)
    manifest = load_manifest(engine_dir)
    wall["export"] = time.perf_counter() - started

    _step(3, f"calibrate: the student's INT8 engine from generated frames -> {_display(paths['student-int8'])}")
    started = time.perf_counter()
    calibrated, _ = calibrate(calibrate_config, paths["student"], paths["student-int8"], force=True)
    wall["calibrate"] = time.perf_counter() - started

    options = ReplayOptions(threads=threads, bootstrap=bootstrap)
    replays = {}
    started = time.perf_counter()
    for name, engine, out in (
        ("teacher", engine_dir, paths["detections"]),
        ("student", paths["student"], paths["detections-student"]),
        ("student-int8", paths["student-int8"], paths["detections-student-int8"]),
    ):
        _step(4, f"replay: {_display(paths['scenes'] / 'bag')} through {_display(engine)}")
        replays[name] = replay_bag(paths["scenes"] / "bag", engine, options, out=out, force=True)
        print(replays[name].format())
    wall["replay"] = time.perf_counter() - started
    replayed = replays["teacher"]

    _step(5, f"report: {_display(work_dir / 'report.md')}, report.json, report.png")
    comparison = [
        _comparison_row("teacher fp32", checkpoint, engine_dir, replays["teacher"]),
        _comparison_row("student fp32", student, paths["student"], replays["student"]),
        _comparison_row(
            f"student {calibrated['metrics'].get('precision', 'int8')}",
            student,
            paths["student-int8"],
            replays["student-int8"],
        ),
    ]
    if all(row["map50_95"] is not None for row in comparison):
        plot(comparison, work_dir / "report.png", frames="the demo bag's generated frames")
    training = read_record(checkpoint.parent)
    training_heldout = training.get("metrics") if training else None
    wall["total"] = time.perf_counter() - began
    report = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}, "
        f"ONNX Runtime {onnxruntime.__version__}",
        "paths": {
            "checkpoint": _display(checkpoint),
            "student": _display(student),
            "bag": _display(paths["scenes"] / "bag"),
            "engine": _display(engine_dir),
            "detections": _display(paths["detections"]),
        },
        "scenes": scenes,
        "scenes_reused": reused,
        "checkpoint_sha256": exported["checkpoint_sha256"],
        "model": model_facts(checkpoint),
        "engine": {
            "backend": manifest.backend,
            "precision": manifest.precision,
            "model_sha256": manifest.model_sha256,
            "model_bytes": model_file(engine_dir, manifest).stat().st_size,
            "max_abs_difference_vs_torch": exported["max_abs_difference_vs_torch"],
        },
        "replay": replayed.to_dict(),
        "comparison": comparison,
        "calibration": {"config": _display(calibration), **calibrated["metrics"]},
        "training_heldout": training_heldout,
        "demo_command": demo_command(checkpoint, work_dir, engine_dir, frames, seed, threads, bootstrap, student),
        "commands": commands(checkpoint, student, calibration, paths, engine_dir, frames, seed, threads, bootstrap),
        "wall_s": {step: round(seconds, 2) for step, seconds in wall.items()},
    }
    atomic_write_text(work_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(work_dir / "report.md", report_markdown(report))
    print(f"wrote {_display(work_dir / 'report.md')} and report.json in {wall['total']:.0f} s")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leaneye-demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model.pt (default: the default model)"
    )
    parser.add_argument(
        "--student", type=Path, default=DEFAULT_STUDENT, help="the student's model.pt (default: the committed one)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scenes, output bag and report (default: %(default)s)"
    )
    parser.add_argument(
        "--engine", type=Path, default=DEFAULT_ENGINE, help="engine directory to (re)write (default: %(default)s)"
    )
    parser.add_argument("--frames", type=int, default=DEMO_FRAMES, help="generated frames (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="scene seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = ONNX Runtime's default)")
    parser.add_argument(
        "--bootstrap", type=int, default=DEMO_BOOTSTRAP, help="bootstrap resamples for the mAP intervals"
    )
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    run_demo(
        args.checkpoint,
        args.work_dir,
        args.engine,
        args.frames,
        args.seed,
        args.threads,
        args.bootstrap,
        student=args.student,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
