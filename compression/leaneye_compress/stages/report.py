"""Report stage: every model of a compression run, measured side by side in one run.

    leaneye-compress report \\
        --entry "teacher fp32" engine=runs/b/teacher checkpoint=runs/b/train/model.pt role=teacher \\
        --entry "teacher fp32 (PyTorch eager)" checkpoint=runs/b/train/model.pt role=teacher_eager \\
        ... --out runs/b/report

For each entry (an engine run by `leaneye.detector.Detector`, or a LeanDet checkpoint run in
PyTorch eager as a yolo_ros-style node runs it: cv2 letterbox, torch forward, the runtime's
postprocessing): parameters and GFLOPs (from the checkpoint), size and gzipped size of the
deployable file, latency end to end per frame and of the inference call alone, and accuracy on
held-out generated scenes by shared/EVAL.md with bootstrap intervals and the paired difference to
the teacher. Latencies are measured in interleaved rounds (every entry, the same frames, the same
thread count, the starting entry rotating each round), so a machine that slows down mid-run slows
every entry alike. The compression targets (P3, P4, P5: `TARGETS`) are evaluated from the measured entries.

OUT receives report.md, report.json, report.png (mAP50-95 against p50 latency) and record.json.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leaneye.engine import load_manifest, model_file
from leaneye.errors import LeanEyeError
from leaneye.eval import EVAL_PROTOCOL, ImageDetections, evaluate, paired_difference
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye.scenes.dataset import scene_ground_truth
from leaneye.vision.detections import Detections
from leaneye.vision.letterbox import letterbox
from leaneye.vision.postprocess import DetectionSettings, Postprocessor

from ..artifacts import read_record, run_stage
from ..checkpoint import load_model
from ..config import bounded, positive, to_mapping
from ..frames import GeneratedFrames, scene_frames
from ..models import contract
from ..models.detector import DecodedOutputs, LeanDet, count_parameters, gflops
from .export import builtin_manifest
from .train import ScenesConfig, TrainConfig

STAGE = "report"
ROLES = ("teacher_eager", "teacher", "student", "student_int8")
# Latency is measured at the runtime's deployment settings (what a vehicle publishes), accuracy at
# the protocol's (score >= 0.001 keeps every candidate for mAP, and costs more postprocessing).
LATENCY_SETTINGS = DetectionSettings()


@dataclass(frozen=True)
class ReportConfig:
    # Held out: the training config's held-out seeds, never used by training, distillation or calibration.
    heldout: ScenesConfig = TrainConfig().heldout
    frame_size: tuple[int, int] = bounded((1224, 370), low=16, high=contract.MAX_INPUT_SIDE)  # width, height
    latency_frames: int = positive(20)  # the first held-out frames, timed in every round
    rounds: int = positive(10)  # interleaved rounds over all entries
    warmup: int = bounded(5, low=0)  # untimed frames per entry before the rounds
    threads: int = positive(2)  # ONNX Runtime intra-op threads and torch threads, the same for all
    bootstrap: int = bounded(EVAL_PROTOCOL.bootstrap, low=1)


@dataclass(frozen=True)
class ReportEntry:
    """One stage's result: an engine directory (run by Detector) and/or a LeanDet checkpoint (for
    parameters and GFLOPs; alone, it is run in PyTorch eager)."""

    name: str
    engine_dir: Path | None = None
    checkpoint: Path | None = None
    role: str = ""  # one of ROLES, or "" for an entry no target compares

    @property
    def eager(self) -> bool:
        return self.engine_dir is None


@dataclass(frozen=True)
class _Target:
    name: str
    candidate: str  # roles
    reference: str
    speed_of: str  # "inference" (the network in its runtime) or "end_to_end" (per frame, pre/post included)
    min_speedup: float
    max_drop_points: float  # mAP50-95, points (x 100)
    max_flops_ratio: float | None = None


# The compression targets (docs/compression/report.md). P4 and P3 compare networks in the same
# runtime: the inference call's p50. P5 compares what runs per frame: the end-to-end p50.
TARGETS = (
    _Target("P4", "student", "teacher", "inference", 1.6, 1.5, max_flops_ratio=0.5),
    _Target("P3", "student_int8", "student", "inference", 2.0, 1.0),
    _Target("P5", "student_int8", "teacher_eager", "end_to_end", 10.0, 2.0),
)


class EagerDetector:
    """A LeanDet checkpoint as a yolo_ros-style node runs it: cv2 letterbox and scaling in Python, the
    PyTorch eager forward pass in FP32, the runtime's postprocessing. Same interface as Detector's
    `detect` and `update_settings`."""

    def __init__(self, model: LeanDet, class_names, settings: DetectionSettings = LATENCY_SETTINGS):
        self.network = DecodedOutputs(model).eval()
        self.manifest = builtin_manifest(model, class_names)
        self.postprocessor = Postprocessor(self.manifest, settings)
        self.class_names = tuple(class_names)
        self.input_size = (model.config.input_height, model.config.input_width)

    def update_settings(self, settings: DetectionSettings) -> None:
        self.postprocessor = Postprocessor(self.manifest, settings)

    def deactivate(self) -> None:
        """Nothing to release (Detector's counterpart frees its backend)."""

    def preprocess(self, frame: np.ndarray):
        """(the network input as a torch tensor, the letterbox transform)."""
        image, transform = letterbox(frame, self.input_size, contract.LETTERBOX_ALIGN, contract.PAD_VALUE)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float().mul_(contract.SCALE)
        return tensor, transform

    @torch.inference_mode()
    def detect(self, frame: np.ndarray) -> Detections:
        start = time.perf_counter()
        tensor, transform = self.preprocess(frame)
        preprocessed = time.perf_counter()
        output = self.network(tensor).numpy()
        inferred = time.perf_counter()
        boxes, scores, class_ids = self.postprocessor.run([output], transform, frame.shape[:2])
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "inference": (inferred - preprocessed) * 1e3,
            "postprocess": (done - inferred) * 1e3,
        }
        return Detections(boxes, scores, class_ids, self.class_names, frame.shape[:2], timings)


def _check_entries(entries: list[ReportEntry]) -> None:
    if not entries:
        raise LeanEyeError("report: no entries; give at least one --entry")
    seen: set = set()
    for entry in entries:
        where = f"entry {entry.name!r}"
        if not entry.name.strip():
            raise LeanEyeError("entry: an empty name; name every entry")
        if entry.name in seen:
            raise LeanEyeError(f"{where}: named twice; entry names must differ")
        seen.add(entry.name)
        if entry.role and entry.role not in ROLES:
            raise LeanEyeError(f"{where}: role {entry.role!r}; expected one of {', '.join(ROLES)}")
        if entry.engine_dir is None and entry.checkpoint is None:
            raise LeanEyeError(f"{where}: neither an engine directory nor a checkpoint; give one or both")
        if entry.role == "teacher_eager" and not entry.eager:
            raise LeanEyeError(f"{where}: role teacher_eager runs the checkpoint in PyTorch; give no engine")
        if entry.role in ROLES[1:] and entry.eager:
            raise LeanEyeError(f"{where}: role {entry.role} needs an engine directory (ONNX Runtime)")
        if entry.engine_dir is not None and not Path(entry.engine_dir).is_dir():
            raise LeanEyeError(f"{where}: engine directory {entry.engine_dir} not found")
        if entry.checkpoint is not None and not Path(entry.checkpoint).is_file():
            raise LeanEyeError(f"{where}: checkpoint {entry.checkpoint} not found")
    roles = [entry.role for entry in entries if entry.role]
    doubled = sorted({role for role in roles if roles.count(role) > 1})
    if doubled:
        raise LeanEyeError(f"entries: role {doubled[0]} given to more than one entry")


def _inputs(entries: list[ReportEntry]) -> dict[str, Path]:
    """The files each entry's numbers come from: checkpoint, manifest and model file."""
    inputs = {}
    for entry in entries:
        if entry.engine_dir is not None:
            engine = Path(entry.engine_dir)
            manifest = load_manifest(engine)
            inputs[f"{entry.name}: manifest.json"] = engine / "manifest.json"
            inputs[f"{entry.name}: {manifest.model}"] = model_file(engine, manifest)
        if entry.checkpoint is not None:
            inputs[f"{entry.name}: checkpoint"] = Path(entry.checkpoint)
    return inputs


def report(
    config: ReportConfig, stages: list[ReportEntry], out: Path, force: bool = False, config_name: str = ""
) -> tuple[dict, bool]:
    """Measure every entry of `stages` side by side and write the report into `out` (skipped when
    `out` holds a report of the same files and config). Returns (record, skipped)."""
    entries = [
        ReportEntry(
            e.name,
            None if e.engine_dir is None else Path(e.engine_dir),
            None if e.checkpoint is None else Path(e.checkpoint),
            e.role,
        )
        for e in stages
    ]
    _check_entries(entries)
    described = [
        {"name": e.name, "role": e.role, "engine": e.engine_dir is not None, "checkpoint": e.checkpoint is not None}
        for e in entries
    ]
    return run_stage(
        STAGE,
        out,
        _inputs(entries),
        {**to_mapping(config), "entries": described},
        lambda folder: _report_into(folder, config, entries, Path(out), config_name),
        force=force,
        versions=("leaneye", "leaneye-compress", "onnxruntime", "torch", "numpy"),
    )


# --- the entries: networks, files, runners -----------------------------------------------------


def _network_facts(entry: ReportEntry, manifest) -> dict:
    """Parameters and GFLOPs from the checkpoint (for an INT8 engine: its network's, given as its
    checkpoint); None without one. A checkpoint that is not the engine's network is an error."""
    if entry.checkpoint is None:
        return {"params": None, "gflops": None}
    model, data = load_model(entry.checkpoint)
    if manifest is not None:
        size = (model.config.input_height, model.config.input_width)
        if size != tuple(manifest.input.size) or tuple(data["class_names"]) != tuple(manifest.class_names):
            raise LeanEyeError(
                f"entry {entry.name!r}: checkpoint {entry.checkpoint} (input {size[0]}x{size[1]}, classes "
                f"{list(data['class_names'])}) is not the network of {entry.engine_dir} (input "
                f"{manifest.input.size[0]}x{manifest.input.size[1]}, classes {list(manifest.class_names)})"
            )
    return {"params": count_parameters(model), "gflops": gflops(model)}


def _entry_facts(entry: ReportEntry, manifest) -> dict:
    """What the entry is: runtime, parameters, GFLOPs, its deployable file and that file's sizes."""
    deployable = Path(entry.checkpoint if manifest is None else model_file(entry.engine_dir, manifest))
    return {
        "name": entry.name,
        "role": entry.role,
        "runtime": "PyTorch eager (FP32)" if manifest is None else f"{manifest.backend} {manifest.precision}",
        **_network_facts(entry, manifest),
        **_file_sizes(deployable),
        "deployable": str(deployable),
        "engine_dir": None if entry.engine_dir is None else str(entry.engine_dir),
        "checkpoint": None if entry.checkpoint is None else str(entry.checkpoint),
    }


def _file_sizes(path: Path) -> dict:
    data = path.read_bytes()
    # mtime 0: the same bytes compress to the same size on every run
    return {"size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


def _open_runner(entry: ReportEntry, threads: int):
    """The entry's detector at the protocol's settings (accuracy first), and its manifest (None for eager)."""
    from leaneye.detector import Detector

    settings = DetectionSettings(**EVAL_PROTOCOL.detector_settings())
    if entry.eager:
        model, data = load_model(entry.checkpoint)
        return EagerDetector(model, data["class_names"], settings), None
    detector = Detector.from_engine(entry.engine_dir, threads=threads, **EVAL_PROTOCOL.detector_settings())
    return detector, detector.manifest


def _check_classes(entry: ReportEntry, class_names, truth_classes) -> None:
    unknown = [name for name in class_names if name not in truth_classes]
    if unknown:
        raise LeanEyeError(
            f"entry {entry.name!r}: classes {unknown} are not classes of the generated scenes {list(truth_classes)}"
        )


# --- held-out splits and the stages' records ---------------------------------------------------


def _scene_ranges(value, key: str = ""):
    """(dotted key, first seed, last seed) of every scene range (a mapping with first_seed and
    sequences) inside a stage's recorded config."""
    if isinstance(value, dict):
        first, count = value.get("first_seed"), value.get("sequences")
        if isinstance(first, int) and isinstance(count, int) and count > 0:
            yield key, first, first + count - 1
        for name, inner in value.items():
            yield from _scene_ranges(inner, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for k, inner in enumerate(value):
            yield from _scene_ranges(inner, f"{key}[{k}]")


def _stage_records(entries: list[ReportEntry]) -> dict[str, dict]:
    """record.json of each entry's engine directory and checkpoint folder, where there is one."""
    records = {}
    for entry in entries:
        for folder in (entry.engine_dir, entry.checkpoint.parent if entry.checkpoint else None):
            if folder is not None and str(folder) not in records:
                record = read_record(folder)
                if record is not None:
                    records[str(folder)] = record
    return records


def _check_heldout(records: dict[str, dict], heldout: ScenesConfig) -> list[dict]:
    """Held-out seeds no stage used: every scene range in the records' configs (other than a
    training config's own held-out set) must miss them. Returns the ranges seen."""
    first, last = heldout.first_seed, heldout.first_seed + heldout.sequences - 1
    seen = []
    for folder, record in records.items():
        for key, low, high in _scene_ranges(record.get("config") or {}):
            if key.split(".")[-1] == "heldout":
                continue
            seen.append(
                {
                    "record": str(Path(folder) / "record.json"),
                    "stage": record.get("stage"),
                    "key": key,
                    "seeds": [low, high],
                }
            )
            if low <= last and first <= high:
                raise LeanEyeError(
                    f"{Path(folder) / 'record.json'}: config {key} used scene seeds {low}..{high}, which overlap "
                    f"the report's held-out seeds {first}..{last}; choose another heldout.first_seed"
                )
    return seen


# --- measuring ---------------------------------------------------------------------------------


def _accuracy_pass(runners: list, config: ReportConfig, scenes: GeneratedFrames) -> tuple:
    """Every held-out frame through every entry: (ground-truth frames, detections per entry, the
    first `latency_frames` frames kept for timing)."""
    from tqdm import tqdm

    truth_frames, kept = [], []
    detections: list[dict] = [{} for _ in runners]
    total = scenes.sequences * scenes.frames_per_sequence
    with tqdm(total=total, desc="report: accuracy", unit="frame", file=sys.stderr) as bar:
        for image_id, (_, frame) in enumerate(scene_frames(scenes, tuple(config.frame_size))):
            for runner, found in zip(runners, detections):
                result = runner.detect(frame.image)
                found[image_id] = ImageDetections.from_class_ids(
                    result.boxes, result.scores, result.class_ids, result.class_names
                )
            if len(kept) < config.latency_frames:
                kept.append(frame.image)
            frame.image = np.zeros((*frame.image.shape[:2], 0), np.uint8)  # the truth needs only its size
            truth_frames.append(frame)
            bar.update(1)
    return truth_frames, detections, kept


def _latency_pass(runners: list, frames: list, config: ReportConfig) -> list[dict]:
    """Interleaved rounds: in each, every entry runs all `frames` in turn, the first entry rotating."""
    from tqdm import tqdm

    end_to_end: list[list] = [[] for _ in runners]
    inference: list[list] = [[] for _ in runners]
    for runner in runners:
        runner.update_settings(LATENCY_SETTINGS)
        for k in range(config.warmup):
            runner.detect(frames[k % len(frames)])
    with tqdm(total=config.rounds * len(runners), desc="report: latency", unit="entry", file=sys.stderr) as bar:
        for round_index in range(config.rounds):
            shift = round_index % len(runners)
            for index in list(range(shift, len(runners))) + list(range(shift)):
                runner = runners[index]
                for frame in frames:
                    start = time.perf_counter()
                    result = runner.detect(frame)
                    end_to_end[index].append((time.perf_counter() - start) * 1e3)
                    inference[index].append(result.timings["inference"])
                bar.update(1)
    return [
        {
            "p50_ms": float(np.percentile(total, 50)),
            "p99_ms": float(np.percentile(total, 99)),
            "inference_p50_ms": float(np.percentile(infer, 50)),
            "inference_p99_ms": float(np.percentile(infer, 99)),
            "latency_samples": len(total),
        }
        for total, infer in zip(end_to_end, inference)
    ]


def _reference_index(entries: list[ReportEntry]) -> int | None:
    """The teacher the paired differences are taken against: ONNX Runtime FP32, else PyTorch eager."""
    for role in ("teacher", "teacher_eager"):
        for index, entry in enumerate(entries):
            if entry.role == role:
                return index
    return None


def _machine(threads: int, load_before: tuple) -> dict:
    import onnxruntime

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "processor": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in _load_average()],
    }


def _load_average() -> tuple:
    try:
        return os.getloadavg()
    except OSError:  # not on every platform
        return ()


# --- targets -----------------------------------------------------------------------------------


def _ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _check(measure: str, measured, goal: float, at_most: bool) -> dict:
    met = None if measured is None else (measured <= goal if at_most else measured >= goal)
    return {"measure": measure, "measured": measured, "goal": f"{'<=' if at_most else '>='} {goal:g}", "met": met}


def evaluate_targets(stages: list[dict], paired: Callable | None = None) -> dict:
    """The compression targets from the measured entries (report.json's `stages`, matched by `role`).

    The mAP50-95 drop is reference - candidate in points; with `paired` (reference name, candidate
    name -> PairedDifference), the paired bootstrap difference with its interval."""
    by_role = {stage["role"]: stage for stage in stages if stage.get("role")}
    targets = {}
    for target in TARGETS:
        candidate, reference = by_role.get(target.candidate), by_role.get(target.reference)
        if candidate is None or reference is None:
            missing = [
                role for role, found in ((target.candidate, candidate), (target.reference, reference)) if not found
            ]
            targets[target.name] = {
                "candidate": target.candidate,
                "reference": target.reference,
                "met": None,
                "missing": f"no entry with role {' or '.join(missing)}",
            }
            continue
        latency = "inference_p50_ms" if target.speed_of == "inference" else "p50_ms"
        checks = []
        if target.max_flops_ratio is not None:
            flops = _ratio(candidate["gflops"], reference["gflops"])
            checks.append(_check("GFLOPs ratio", flops, target.max_flops_ratio, at_most=True))
        speedup = _ratio(reference[latency], candidate[latency])
        checks.append(_check(f"speed-up ({latency})", speedup, target.min_speedup, at_most=False))
        drop = (reference["map50_95"] - candidate["map50_95"]) * 100 + 0.0
        drop_check = _check("mAP50-95 drop (points)", drop, target.max_drop_points, at_most=True)
        if paired is not None:
            difference = paired(reference["name"], candidate["name"])
            low, high = difference.interval["mAP50-95"]
            drop_check["measured"] = -difference.difference["mAP50-95"] * 100 + 0.0  # + 0.0: no "-0.00"
            drop_check["met"] = drop_check["measured"] <= target.max_drop_points
            drop_check["interval95"] = [-high * 100 + 0.0, -low * 100 + 0.0]
        checks.append(drop_check)
        targets[target.name] = {
            "candidate": candidate["name"],
            "reference": reference["name"],
            "checks": checks,
            "met": all(check["met"] for check in checks) if all(c["met"] is not None for c in checks) else None,
        }
    return targets


# --- the stage ---------------------------------------------------------------------------------


def report_command(entries: list[ReportEntry], out: Path, config_name: str = "") -> str:
    """The `leaneye-compress report` command line that measures these entries again."""
    parts = ["leaneye-compress report"]
    for entry in entries:
        items = [shlex.quote(entry.name)]
        if entry.engine_dir is not None:
            items.append(f"engine={shlex.quote(str(entry.engine_dir))}")
        if entry.checkpoint is not None:
            items.append(f"checkpoint={shlex.quote(str(entry.checkpoint))}")
        if entry.role:
            items.append(f"role={entry.role}")
        parts.append("--entry " + " ".join(items))
    if config_name:
        parts.append(f"--config {shlex.quote(config_name)}")
    parts.append(f"--out {shlex.quote(str(out))} --force")
    return " \\\n    ".join(parts)


def _report_into(folder: Path, config: ReportConfig, entries: list[ReportEntry], out: Path, config_name: str) -> dict:
    load_before = _load_average()
    records = _stage_records(entries)
    scene_ranges = _check_heldout(records, config.heldout)
    heldout = GeneratedFrames(
        config.heldout.first_seed,
        config.heldout.sequences,
        config.heldout.frames_per_sequence,
        config.heldout.frame_step,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    runners: list = []
    try:
        facts = []
        for entry in entries:
            runner, manifest = _open_runner(entry, config.threads)
            runners.append(runner)
            _check_classes(entry, runner.class_names, SCENE_CLASSES)
            facts.append(_entry_facts(entry, manifest))
        truth_frames, detections, latency_frames = _accuracy_pass(runners, config, heldout)
        latencies = _latency_pass(runners, latency_frames, config)
    finally:
        for runner in runners:
            runner.deactivate()
        torch.set_num_threads(previous_threads)

    truth = scene_ground_truth(truth_frames)
    if truth.num_objects() == 0:
        raise LeanEyeError(
            f"heldout: the {len(truth_frames)} held-out frames hold no labelled object (at {config.frame_size[0]}x"
            f"{config.frame_size[1]} pixels objects under 25 px high are ignore regions); raise frame_size or sequences"
        )
    by_name = {entry.name: detections[index] for index, entry in enumerate(entries)}
    differences: dict = {}

    def paired(reference_name: str, candidate_name: str):
        """The paired bootstrap difference candidate - reference, computed once per pair."""
        key = (reference_name, candidate_name)
        if key not in differences:
            differences[key] = paired_difference(
                truth, by_name[reference_name], by_name[candidate_name], bootstrap=config.bootstrap
            )
        return differences[key]

    reference = _reference_index(entries)
    stages = []
    for index, entry in enumerate(entries):
        result = evaluate(truth, detections[index], bootstrap=config.bootstrap)
        teacher = None if reference is None else entries[reference].name
        stage = {
            **facts[index],
            **latencies[index],
            "map50": result.map50,
            "map50_interval": list(result.map50_interval),
            "map50_95": result.map50_95,
            "map50_95_interval": list(result.map50_95_interval),
            "ap_by_size": result.ap_by_size,
            # to_dict's "reference" and "candidate" hold the two models' mAPs; "teacher" names the reference
            "paired_vs_teacher": None
            if teacher is None
            else {"teacher": teacher, **paired(teacher, entry.name).to_dict()},
        }
        stages.append(stage)
    document = {
        "stages": stages,
        "targets": evaluate_targets(stages, paired),
        "frames": {
            "accuracy": {
                "what": "held-out generated scenes: seeds that no stage config recorded beside the entries used",
                "seeds": [heldout.first_seed, heldout.first_seed + heldout.sequences - 1],
                "frames_per_sequence": heldout.frames_per_sequence,
                "frame_step": heldout.frame_step,
                "frame_size": list(config.frame_size),
                "frames": len(truth_frames),
                "objects": truth.num_objects(),
                "protocol": EVAL_PROTOCOL.describe(),
                "bootstrap_resamples": config.bootstrap,
            },
            "latency": {
                "what": f"the first {len(latency_frames)} held-out frames, in every round",
                "frames": len(latency_frames),
                "rounds": config.rounds,
                "warmup_frames_per_entry": config.warmup,
                "threads": config.threads,
                "settings": {
                    "conf": LATENCY_SETTINGS.conf,
                    "iou": LATENCY_SETTINGS.iou,
                    "max_detections": LATENCY_SETTINGS.max_detections,
                },
            },
            "stage_scene_ranges": scene_ranges,
        },
        "machine": _machine(config.threads, load_before),
        "command": report_command(entries, out, config_name),
    }
    document = _without_nan(document)
    (folder / "report.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(report_markdown(document), encoding="utf-8")
    plot(document["stages"], folder / "report.png")
    return {
        "metrics": {
            "stages": [
                {key: stage[key] for key in ("name", "p50_ms", "inference_p50_ms", "map50", "map50_95")}
                for stage in document["stages"]
            ],
            "targets": {name: target["met"] for name, target in document["targets"].items()},
        },
        "details": {"frames": document["frames"], "machine": document["machine"]},
    }


def _without_nan(value):
    """JSON has no NaN: an AP of a class or size without objects becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


# --- report.md and report.png ------------------------------------------------------------------


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _with_interval(value, interval, scale: float = 1.0, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    form = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    text = form.format(value * scale)
    if interval:
        text += f" [{form.format(interval[0] * scale)}, {form.format(interval[1] * scale)}]"
    return text


def report_markdown(document: dict) -> str:
    machine, frames = document["machine"], document["frames"]
    accuracy, latency = frames["accuracy"], frames["latency"]

    def load(average: list) -> str:
        return f"{average[0]:.2f}" if average else "n/a"

    lines = [
        "# Compression report",
        "",
        f"Measured side by side in one run on {machine['processor']} ({machine['cpu_count']} CPUs, "
        f"threads: {machine['threads']} for every entry; 1-minute load average {load(machine['load_average_before'])} "
        f"before, {load(machine['load_average_after'])} after), ONNX Runtime {machine['onnxruntime']}, "
        f"PyTorch {machine['torch']}.",
        "",
        "| stage | runtime | params (M) | GFLOPs | size (MB) | gzip (MB) | p50 ms | p99 ms | inference p50 ms "
        "| mAP50 [95 %] | mAP50-95 [95 %] | Δ mAP50-95 vs teacher, points [95 %] |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for stage in document["stages"]:
        paired = stage["paired_vs_teacher"]
        delta = (
            "n/a"
            if paired is None
            else _with_interval(
                paired["difference"]["mAP50-95"], paired["interval95"]["mAP50-95"], 100, digits=2, sign=True
            )
        )
        params = None if stage["params"] is None else stage["params"] / 1e6
        lines.append(
            f"| {stage['name']} | {stage['runtime']} | {_number(params, 2)} | {_number(stage['gflops'], 2)} "
            f"| {stage['size_bytes'] / 1e6:.2f} | {stage['gzip_bytes'] / 1e6:.2f} | {stage['p50_ms']:.2f} "
            f"| {stage['p99_ms']:.2f} | {stage['inference_p50_ms']:.2f} "
            f"| {_with_interval(stage['map50'], stage['map50_interval'])} "
            f"| {_with_interval(stage['map50_95'], stage['map50_95_interval'])} | {delta} |"
        )
    reference = next((s["paired_vs_teacher"]["teacher"] for s in document["stages"] if s["paired_vs_teacher"]), None)
    lines += [
        "",
        "p50/p99: end to end per frame through the runtime (preprocess, inference, postprocess at score >= "
        f"{latency['settings']['conf']}, NMS IoU {latency['settings']['iou']}); inference: the backend's call alone. "
        + (f"Δ: paired bootstrap difference to {reference}." if reference else "No teacher entry: no Δ."),
        "",
        "## Targets",
        "",
        "| target | candidate vs reference | measure | measured | goal | met |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for name, target in document["targets"].items():
        if "missing" in target:
            lines.append(f"| {name} | {target['candidate']} vs {target['reference']} | {target['missing']} | | | n/a |")
            continue
        for check in target["checks"]:
            measured = _number(check["measured"], 2)
            if check.get("interval95"):
                measured += f" [{check['interval95'][0]:.2f}, {check['interval95'][1]:.2f}]"
            met = {True: "yes", False: "no", None: "n/a"}[check["met"]]
            lines.append(
                f"| {name} | {target['candidate']} vs {target['reference']} | {check['measure']} | {measured} "
                f"| {check['goal']} | {met} |"
            )
    lines += [
        "",
        "## Frames",
        "",
        f"- Accuracy: {accuracy['frames']} generated frames ({accuracy['frame_size'][0]}x{accuracy['frame_size'][1]}), "
        f"seeds {accuracy['seeds'][0]}..{accuracy['seeds'][1]}, frames 0, {accuracy['frame_step']}, ... "
        f"({accuracy['frames_per_sequence']} per seed), {accuracy['objects']} objects; {accuracy['protocol']}, "
        f"{accuracy['bootstrap_resamples']} resamples.",
        f"- Latency: {latency['what']}; {latency['rounds']} interleaved rounds (the first entry rotating), "
        f"{latency['warmup_frames_per_entry']} warm-up frames per entry.",
    ]
    for used in frames["stage_scene_ranges"]:
        lines.append(
            f"- Stage `{used['stage']}` ({used['record']}): {used['key']} seeds {used['seeds'][0]}..{used['seeds'][1]}"
        )
    lines += ["", "## Command", "", "    " + document["command"].replace("\n", "\n    "), ""]
    return "\n".join(lines)


def plot(stages: list[dict], path: Path, frames: str = "held-out generated scenes") -> None:
    """mAP50-95 (95 % interval bars) against end-to-end p50 latency, each stage labelled in its colour."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=120)
    try:
        # Labels alternate above and below their points, so that stages of similar latency and
        # accuracy stay readable.
        for index, stage in enumerate(sorted(stages, key=lambda stage: stage["p50_ms"])):
            low, high = stage["map50_95_interval"]
            value = stage["map50_95"]
            drawn = axes.errorbar(
                stage["p50_ms"],
                value,
                yerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]],
                fmt="o",
                capsize=4,
            )
            offset = (7, 6 + 12 * (index // 2 % 2)) if index % 2 == 0 else (7, -14 - 12 * (index // 2 % 2))
            axes.annotate(
                stage["name"],
                (stage["p50_ms"], value),
                textcoords="offset points",
                xytext=offset,
                color=drawn.lines[0].get_color(),
                fontsize=9,
            )
        latencies = [stage["p50_ms"] for stage in stages]
        if max(latencies) > 4 * min(latencies):
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(ticker.ScalarFormatter())
            axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        axes.margins(x=0.2, y=0.15)
        axes.set_xlabel("p50 latency per frame, end to end (ms)")
        axes.set_ylabel(f"mAP50-95, {frames}")
        axes.set_title("Accuracy against measured latency (95 % bootstrap intervals)", pad=12)
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        figure.savefig(path, format="png", bbox_inches="tight")
    finally:
        pyplot.close(figure)
