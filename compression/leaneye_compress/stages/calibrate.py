"""Calibrate INT8: an FP32 engine -> an INT8 (QDQ) engine chosen by measured accuracy and latency.

    leaneye-compress calibrate --engine engines/student --data drive.mcap --out runs/int8

1. Ranges: the FP32 ONNX model runs on the calibration frames, prepared by the runtime's own input
   path (frames.network_inputs: letterbox, colour, scale); ONNX Runtime's MinMax, Entropy or
   Percentile calibrator turns the activations into one range per tensor (out/ranges.json).
2. Sensitivity: each quantizable layer (quant/emit.py: a Conv and its activation) is quantized
   alone; how far the detector's raw outputs move from FP32's on a few calibration frames is its
   sensitivity (the detections' disagreement is recorded beside it).
3. Fallback: all-INT8 first, then layers returned to float, most sensitive first, `fallback_step`
   at a time, until the accuracy budget holds on the selection frames (and `extra_steps` further,
   since more float can be faster where INT8 kernels are slow). Accuracy goes through the runtime's
   Detector: mAP against labels (KITTI labels or the generated scenes' truth, paired bootstrap
   against FP32) or, without labels, agreement with FP32 (F1 at IoU 0.5, mean IoU), by shared/EVAL.md.
4. Latency: every configuration tried and FP32 run side by side in ONNX Runtime CPU sessions with
   the same threads; of those that hold the budget the fastest (median) is chosen: FP32 too, when
   no INT8 configuration is faster.

out/ is an engine directory `leaneye` runs unchanged (manifest precision int8, or fp32 when FP32 was
chosen, the calibration recorded in its producer field), plus tensorrt/model.onnx (S8S8 QDQ of the
INT8 placement that held the budget, for the TensorRT builder), ranges.json and record.json (every
configuration and every per-layer decision).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leaneye.engine import file_sha256, load_manifest, model_file, tool_versions, write_engine
from leaneye.errors import LeanEyeError

from ..artifacts import run_stage
from ..config import bounded, positive, to_mapping
from ..frames import FramesConfig, GeneratedFrames, frames_inputs, load_frames, network_inputs
from ..quant.emit import FLAVOURS, emit_qdq, prepare_model, quantizable_layers
from ..quant.ranges import METHODS, collect_ranges, save_ranges

STAGE = "calibrate"
METRICS = ("mAP50-95", "mAP50")


@dataclass(frozen=True)
class SelectionConfig:
    """The frames configurations are scored on; never the calibration frames (EVAL.md, Splits).

    The first that is set is used: `kitti` (mAP against KITTI labels, images [first, first + count)
    of image_2/ by name), `frames` (unlabelled: agreement with FP32), `scenes` (mAP against the
    generated scenes' own truth).
    """

    kitti: str = ""  # a KITTI folder: image_2/ and label_2/
    first: int = bounded(0, low=0)
    count: int = bounded(0, low=0)  # 0 = every image from `first` on
    frames: FramesConfig = FramesConfig()
    scenes: GeneratedFrames = GeneratedFrames(first_seed=8_500_000, sequences=6, frames_per_sequence=4, frame_step=10)


@dataclass(frozen=True)
class BudgetConfig:
    """What "accurate enough" means: with labels, the metric may drop at most `max_drop` points
    (100 x mAP) below FP32's on the selection frames; without, agreement with FP32 must reach
    `min_f1` and `min_mean_iou`."""

    metric: str = bounded("mAP50-95", choices=METRICS)
    max_drop: float = bounded(1.0, low=0)
    min_f1: float = bounded(0.9, low=0, high=1)
    min_mean_iou: float = bounded(0.0, low=0, high=1)


@dataclass(frozen=True)
class CalibrateConfig:
    # Calibration frames: seeds of their own by default (never training, held-out or selection seeds).
    data: FramesConfig = FramesConfig(
        scenes=GeneratedFrames(first_seed=8_000_000, sequences=8, frames_per_sequence=4, frame_step=8)
    )
    min_frames: int = positive(16)
    method: str = bounded("minmax", choices=METHODS)
    percentile: float = bounded(99.999, low=50, high=100)
    selection: SelectionConfig = SelectionConfig()
    budget: BudgetConfig = BudgetConfig()
    emitter: str = bounded("ort-cpu", choices=FLAVOURS)  # the QDQ flavour of the engine directory
    sensitivity_frames: int = positive(4)
    fallback_step: int = positive(1)  # layers returned to float per step
    max_fallback: int = bounded(16, low=0)  # at most this many layers in float
    extra_steps: int = bounded(2, low=0)  # fallback steps tried after the first that holds the budget
    latency_runs: int = positive(40)
    warmup_runs: int = positive(5)
    threads: int = bounded(2, low=0)  # ONNX Runtime intra-op threads everywhere (0 = its default)
    bootstrap: int = positive(200)  # paired resamples for the mAP difference's interval


class _Selection:
    """Selection frames, their keys, description, and ground truth (None: agreement only)."""

    def __init__(self, images: list, keys: list, sources: list, description: str, truth=None):
        self.images, self.keys, self.sources, self.description, self.truth = images, keys, sources, description, truth


def _kitti_selection(config: SelectionConfig, class_names) -> _Selection:
    from leaneye.eval import GroundTruth, kitti_ground_truth
    from leaneye.image_io import read_image

    root = Path(config.kitti)
    truth = kitti_ground_truth(root)
    chosen = truth.images[config.first : config.first + config.count if config.count else None]
    if not chosen:
        raise LeanEyeError(
            f"calibrate.selection: {root} has {len(truth.images)} labelled images; first {config.first} "
            f"count {config.count} selects none"
        )
    _check_classes(truth.classes, class_names, f"--labels {root}")
    images = [read_image(root / "image_2" / image.file_name)[1] for image in chosen]
    described = f"KITTI {root} images {config.first}..{config.first + len(chosen) - 1} ({len(chosen)}, labelled)"
    sources = [str(root / "image_2" / image.file_name) for image in chosen]
    return _Selection(
        images, [image.image_id for image in chosen], sources, described, GroundTruth(chosen, truth.classes)
    )


def _scene_selection(scenes: GeneratedFrames, class_names) -> _Selection:
    from leaneye.scenes.dataset import scene_ground_truth
    from leaneye.scenes.render import SceneSequence

    from ..frames import DEFAULT_FRAME_SIZE

    frames, sources = [], []
    for seed in range(scenes.first_seed, scenes.first_seed + scenes.sequences):
        sequence = SceneSequence(seed, DEFAULT_FRAME_SIZE)
        for k in range(scenes.frames_per_sequence):
            frames.append(sequence.frame(k * scenes.frame_step))
            sources.append(f"scene {seed}#{k * scenes.frame_step}")
    truth = scene_ground_truth(frames)
    _check_classes(truth.classes, class_names, "generated scenes")
    last = scenes.first_seed + scenes.sequences - 1
    described = f"generated scenes seeds {scenes.first_seed}..{last} ({len(frames)} frames, generator's truth)"
    return _Selection([f.image for f in frames], list(range(len(frames))), sources, described, truth)


def _check_classes(label_classes, class_names, where: str) -> None:
    unknown = [name for name in label_classes if name not in class_names]
    if len(unknown) == len(label_classes):
        raise LeanEyeError(
            f"{where}: labelled classes {list(label_classes)} are not in the engine's class list "
            f"({', '.join(list(class_names)[:8])}{', ...' if len(class_names) > 8 else ''})"
        )


def _selection(config: SelectionConfig, class_names) -> _Selection:
    if config.kitti:
        return _kitti_selection(config, class_names)
    if config.frames.paths or config.frames.scenes.sequences:
        frames = load_frames(config.frames, "calibrate.selection.frames", minimum=1)
        return _Selection(
            [f.image for f in frames],
            list(range(len(frames))),
            [f.source for f in frames],
            f"{len(frames)} unlabelled frames ({', '.join(config.frames.paths) or 'generated scenes'})",
        )
    if config.scenes.sequences:
        return _scene_selection(config.scenes, class_names)
    raise LeanEyeError("calibrate.selection: no selection frames; set kitti, frames or scenes")


def _inputs(config: CalibrateConfig, engine: Path) -> dict[str, Path]:
    manifest = load_manifest(engine)
    inputs = {"engine/manifest.json": engine / "manifest.json", "engine/model": model_file(engine, manifest)}
    inputs.update({f"data/{role}": path for role, path in frames_inputs(config.data).items()})
    inputs.update({f"selection/{role}": path for role, path in frames_inputs(config.selection.frames).items()})
    if config.selection.kitti:
        root = Path(config.selection.kitti)
        for sub in ("image_2", "label_2"):
            if not (root / sub).is_dir():
                raise LeanEyeError(f"--labels {root}: expected a KITTI folder with image_2/ and label_2/")
            for path in sorted((root / sub).iterdir()):
                inputs[f"labels/{sub}/{path.name}"] = path
    return inputs


def calibrate(config: CalibrateConfig, engine: Path, out: Path, force: bool = False) -> tuple[dict, bool]:
    """Run the calibrate stage from the FP32 engine directory `engine` into `out`; (record, skipped)."""
    engine = Path(engine)
    return run_stage(
        STAGE,
        out,
        _inputs(config, engine),
        to_mapping(config),
        lambda folder: _calibrate_into(folder, config, engine),
        force=force,
        versions=("leaneye", "leaneye-compress", "onnx", "onnxruntime", "numpy"),
    )


def _detections(model_bytes: bytes, manifest, selection: _Selection, threads: int) -> dict:
    """Each selection frame's detections by the runtime's Detector at EVAL.md's settings."""
    from leaneye.backends import BackendOptions
    from leaneye.backends.onnxruntime import OnnxRuntimeBackend
    from leaneye.detector import Detector
    from leaneye.eval import EVAL_PROTOCOL, ImageDetections
    from leaneye.vision.postprocess import DetectionSettings

    with tempfile.TemporaryDirectory(prefix="leaneye-calibrate-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model_bytes)
        backend = OnnxRuntimeBackend(path, manifest.input.name, manifest.input.shape, BackendOptions(threads=threads))
        settings = DetectionSettings(**EVAL_PROTOCOL.detector_settings())
        with Detector(manifest, backend, settings) as detector:
            detector.activate()
            found = {}
            for key, image in zip(selection.keys, selection.images):
                d = detector.detect(image)
                found[key] = ImageDetections.from_class_ids(d.boxes, d.scores, d.class_ids, manifest.class_names)
    return found


def postprocessed_detections(outputs: list, manifest, images: list) -> dict:
    """Detections from raw outputs by the runtime's Postprocessor at EVAL.md's settings, keyed by frame."""
    from leaneye.eval import EVAL_PROTOCOL, ImageDetections
    from leaneye.vision.letterbox import letterbox_transform
    from leaneye.vision.postprocess import DetectionSettings, Postprocessor

    postprocessor = Postprocessor(manifest, DetectionSettings(**EVAL_PROTOCOL.detector_settings()))
    found = {}
    for k, (frame_outputs, image) in enumerate(zip(outputs, images)):
        transform = letterbox_transform(image.shape[:2], manifest.input.size, manifest.letterbox_align)
        boxes, scores, class_ids = postprocessor.run(frame_outputs, transform, image.shape[:2])
        found[k] = ImageDetections.from_class_ids(boxes, scores, class_ids, manifest.class_names)
    return found


def _agreement(reference: dict, candidate: dict) -> tuple[float, float]:
    """(F1, mean IoU) of the candidate's detections against the reference's (EVAL.md). Neither
    detecting anything agrees perfectly; nothing matched has a mean IoU of 0."""
    from leaneye.eval import agreement

    agreed = agreement(reference, candidate)
    if np.isnan(agreed.mean_f1):
        return 1.0, 1.0
    return agreed.mean_f1, 0.0 if np.isnan(agreed.mean_iou) else agreed.mean_iou


def _disagreement(reference: dict, candidate: dict) -> float:
    """A layer's sensitivity: (1 - F1) + (1 - mean IoU) of the detections against FP32's, 0 = identical."""
    f1, iou = _agreement(reference, candidate)
    return (1.0 - f1) + (1.0 - iou)


def _accuracy(config: CalibrateConfig, selection: _Selection, reference: dict, candidate: dict) -> dict:
    """The candidate's accuracy against FP32 on the selection frames, and whether it holds the budget."""
    from leaneye.eval import paired_difference

    budget = config.budget
    if selection.truth is not None:
        paired = paired_difference(selection.truth, reference, candidate, bootstrap=config.bootstrap)
        drop = -100.0 * paired.difference[budget.metric]
        low, high = paired.interval[budget.metric]
        return {
            "metric": budget.metric,
            "mAP50": round(paired.candidate["mAP50"], 4),
            "mAP50-95": round(paired.candidate["mAP50-95"], 4),
            "drop_points": round(drop, 2),
            "difference_interval95_points": [round(100 * low, 2), round(100 * high, 2)],
            "holds": bool(drop <= budget.max_drop),
        }
    f1, iou = _agreement(reference, candidate)
    return {
        "metric": "agreement",
        "F1": round(f1, 4),
        "mean_IoU": round(iou, 4),
        "holds": bool(f1 >= budget.min_f1 and iou >= budget.min_mean_iou),
    }


def _budget_text(config: CalibrateConfig, labelled: bool) -> str:
    b = config.budget
    if labelled:
        return f"{b.metric} drop <= {b.max_drop:g} points"
    return f"agreement with FP32 F1 >= {b.min_f1:g} and mean IoU >= {b.min_mean_iou:g}"


def _accuracy_text(accuracy: dict) -> str:
    if accuracy["metric"] == "agreement":
        return f"F1 {accuracy['F1']:.3f}, mean IoU {accuracy['mean_IoU']:.3f}"
    return f"{accuracy['metric']} {accuracy[accuracy['metric']]:.3f} (drop {accuracy['drop_points']:+.2f} points)"


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _sensitivities(config: CalibrateConfig, model, ranges, layers, manifest, images, inputs) -> tuple[dict, dict]:
    """Per layer quantized alone, on the frames `images` (network inputs `inputs`): its sensitivity,
    the relative error of the raw outputs against FP32's (quant.measure.output_error), and the
    disagreement of its detections with FP32's, (1 - F1) + (1 - mean IoU).

    The raw error ranks: on YOLOX-Nano the detections of a few frames barely move when one layer
    alone is quantized, and ranking by them returned the wrong layers first (docs/compression/calibrate.md)."""
    from tqdm import tqdm

    from ..quant.measure import output_error, run_frames

    name = manifest.input.name
    reference_outputs = run_frames(model.SerializeToString(), name, inputs, config.threads)
    reference = postprocessed_detections(reference_outputs, manifest, images)
    sensitivity, disagreement = {}, {}
    for layer in tqdm(layers, desc="sensitivity per layer", unit="layer", file=sys.stderr):
        alone = emit_qdq(model, ranges, config.emitter, only=[layer.name]).SerializeToString()
        outputs = run_frames(alone, name, inputs, config.threads)
        sensitivity[layer.name] = output_error(reference_outputs, outputs)
        disagreement[layer.name] = _disagreement(reference, postprocessed_detections(outputs, manifest, images))
    return sensitivity, disagreement


def _calibrate_into(folder: Path, config: CalibrateConfig, engine: Path) -> dict:
    from tqdm import tqdm

    from ..quant.measure import interleaved_latency

    manifest = load_manifest(engine)
    model_path = model_file(engine, manifest)
    if manifest.backend != "onnxruntime" or model_path.suffix != ".onnx":
        raise LeanEyeError(f"--engine {engine}: expected an ONNX Runtime engine (model.onnx), got {manifest.backend}")
    if manifest.precision != "fp32" or manifest.input.dtype != "float32":
        raise LeanEyeError(f"--engine {engine}: expected an FP32 engine, got precision {manifest.precision}")
    model = prepare_model(model_path.read_bytes(), str(model_path))
    fp32_bytes = model.SerializeToString()
    layers = quantizable_layers(model)
    if not layers:
        raise LeanEyeError(f"{model_path}: no Conv layers to quantize")

    frames = load_frames(config.data, "calibrate.data", minimum=config.min_frames)
    selection = _selection(config.selection, manifest.class_names)
    overlap = sorted(
        {str(Path(f.source).resolve()) for f in frames} & {str(Path(s).resolve()) for s in selection.sources}
    )
    if overlap:
        raise LeanEyeError(
            f"calibrate: {len(overlap)} frames are both calibration and selection frames (e.g. {overlap[0]}); "
            "EVAL.md needs them disjoint"
        )
    labelled = selection.truth is not None
    calibration_inputs = network_inputs([f.image for f in frames], manifest)
    data_sources = sorted({f.source.split("#")[0] for f in frames})
    _say(f"calibrate: {len(frames)} calibration frames; selection: {selection.description}")

    with tqdm(total=len(frames), desc=f"calibrate ranges ({config.method})", unit="frame", file=sys.stderr) as bar:
        ranges = collect_ranges(
            fp32_bytes,
            manifest.input.name,
            calibration_inputs,
            config.method,
            config.percentile,
            config.threads,
            sources=data_sources,
            model_sha256=file_sha256(model_path),
            progress=lambda done: bar.update(done - bar.n),
        )

    reference = _detections(fp32_bytes, manifest, selection, config.threads)
    configurations = []  # what was tried: placement, model bytes, accuracy
    fallback_counts = list(range(0, min(config.max_fallback, len(layers)) + 1, config.fallback_step))
    held_at = None
    sensitivity, disagreement, order = {}, {}, []
    with tqdm(total=len(fallback_counts), desc="fallback search", unit="config", file=sys.stderr) as bar:
        for count in fallback_counts:
            if count and not sensitivity:  # measured only once a fallback is needed
                probe = slice(0, config.sensitivity_frames)
                sensitivity, disagreement = _sensitivities(
                    config, model, ranges, layers, manifest, [f.image for f in frames[probe]], calibration_inputs[probe]
                )
                order = sorted(layers, key=lambda layer: -sensitivity[layer.name])
            float_layers = [layer.name for layer in order[:count]]
            qdq = emit_qdq(model, ranges, config.emitter, float_layers=float_layers).SerializeToString()
            accuracy = _accuracy(config, selection, reference, _detections(qdq, manifest, selection, config.threads))
            name = "all-int8" if count == 0 else f"int8, {count} layers float"
            configurations.append({"name": name, "float_layers": float_layers, "model": qdq, "accuracy": accuracy})
            bar.write(
                f"{name}: {_accuracy_text(accuracy)}{'' if accuracy['holds'] else ' (over budget)'}", file=sys.stderr
            )
            bar.update(1)
            if accuracy["holds"] and held_at is None:
                held_at = len(configurations) - 1
            if held_at is not None and len(configurations) - 1 - held_at >= config.extra_steps:
                break

    budget = _budget_text(config, labelled)
    if held_at is None:
        best = max(
            configurations,
            key=lambda c: c["accuracy"]["F1"] if not labelled else -c["accuracy"]["drop_points"],
        )
        raise LeanEyeError(
            f"calibrate: no INT8 configuration holds the budget ({budget}) on {selection.description}; best found: "
            f"{best['name']} with {_accuracy_text(best['accuracy'])}; raise calibrate.max_fallback "
            f"(now {config.max_fallback}) or loosen calibrate.budget, or keep the FP32 engine"
        )

    fp32_accuracy = _accuracy(config, selection, reference, reference)
    configurations.append({"name": "fp32", "float_layers": None, "model": fp32_bytes, "accuracy": fp32_accuracy})
    _say(f"latency: {len(configurations)} configurations side by side, {config.latency_runs} runs each")
    latencies = interleaved_latency(
        [c["model"] for c in configurations],
        manifest.input.name,
        calibration_inputs[:1],
        config.latency_runs,
        config.warmup_runs,
        config.threads,
    )
    for configuration, latency in zip(configurations, latencies):
        configuration["latency"] = latency
    holding = [c for c in configurations if c["accuracy"]["holds"]]
    chosen = min(holding, key=lambda c: c["latency"]["p50_ms"])
    fp32 = configurations[-1]
    int8_placement = configurations[held_at]  # the TensorRT flavour's placement: the first that held
    speedup = fp32["latency"]["p50_ms"] / chosen["latency"]["p50_ms"]
    if chosen is fp32:
        fastest_int8 = min(holding[:-1], key=lambda c: c["latency"]["p50_ms"])
        reason = (
            f"FP32 chosen: no INT8 configuration holding the budget is faster on ONNX Runtime CPU "
            f"({config.threads} thread{'' if config.threads == 1 else 's'}); the fastest, {fastest_int8['name']}, runs at "
            f"{fastest_int8['latency']['p50_ms']:.2f} ms against FP32's {fp32['latency']['p50_ms']:.2f} ms"
        )
    else:
        reason = (
            f"{chosen['name']} chosen: fastest of the {len(holding)} configurations holding the budget "
            f"({chosen['latency']['p50_ms']:.2f} ms, FP32 {fp32['latency']['p50_ms']:.2f} ms, {speedup:.2f}x)"
        )
    _say(reason)

    chosen_float = set(chosen["float_layers"]) if chosen is not fp32 else {layer.name for layer in layers}
    rank = {layer.name: k + 1 for k, layer in enumerate(order)}
    decisions = []
    for index, layer in enumerate(layers):
        ranked = f"sensitivity rank {rank[layer.name]} of {len(layers)}" if rank else "sensitivity not measured"
        if chosen is fp32:
            why = "float: FP32 chosen for the whole model (no faster INT8 configuration holds the budget)"
        elif layer.name in chosen_float:
            why = f"float: among the {len(chosen_float)} most sensitive layers returned to float ({ranked})"
        elif rank:
            why = f"int8: {ranked}, not needed in float for the budget"
        else:
            why = "int8: all-INT8 held the budget, no fallback needed"
        decisions.append(
            {
                "layer": layer.name,
                "index": index,
                "nodes": list(layer.nodes),
                "kind": layer.describe(),
                "sensitivity": float(f"{sensitivity[layer.name]:.4g}") if sensitivity else None,
                "detection_disagreement": round(disagreement[layer.name], 4) if sensitivity else None,
                "sensitivity_rank": rank.get(layer.name),
                "decision": "float" if layer.name in chosen_float else "int8",
                "why": why,
            }
        )

    precision = "fp32" if chosen is fp32 else "int8"
    calibration = {
        "method": config.method,
        **({"percentile": config.percentile} if config.method == "percentile" else {}),
        "frames": len(frames),
        "data": data_sources,
        "selection": selection.description,
        "budget": budget,
    }
    producer = {
        "tool": "leaneye-compress calibrate",
        "versions": tool_versions("leaneye-compress", "onnx", "onnxruntime"),
        "source_engine": str(engine),
        "source_model_sha256": file_sha256(model_path),
        "calibration": calibration,
        "emitter": config.emitter if chosen is not fp32 else None,
        "float_layers": sorted(chosen["float_layers"]) if chosen is not fp32 else None,
        "chosen": chosen["name"],
        "why": reason,
    }
    write_engine(folder, chosen["model"], {**manifest.to_dict(), "precision": precision, "producer": producer}, True)
    save_ranges(ranges, folder / "ranges.json")
    tensorrt_model = emit_qdq(model, ranges, "tensorrt", float_layers=int8_placement["float_layers"])
    (folder / "tensorrt").mkdir()
    (folder / "tensorrt" / "model.onnx").write_bytes(tensorrt_model.SerializeToString())

    tried = [
        {
            "name": c["name"],
            "placement": "fp32" if c["float_layers"] is None else {"float_layers": c["float_layers"]},
            "accuracy": c["accuracy"],
            "latency": c["latency"],
            "chosen": c is chosen,
        }
        for c in configurations
    ]
    return {
        "metrics": {
            "precision": precision,
            "chosen": chosen["name"],
            "p50_ms": chosen["latency"]["p50_ms"],
            "p99_ms": chosen["latency"]["p99_ms"],
            "fp32_p50_ms": fp32["latency"]["p50_ms"],
            "speedup_vs_fp32": round(speedup, 3),
            "accuracy": chosen["accuracy"],
            "calibration_frames": len(frames),
            "layers": len(layers),
            "float_layers": len(chosen_float),
        },
        "details": {
            "why": reason,
            "calibration": calibration,
            "threads": config.threads,
            "configurations": tried,
            "int8_placement": {"name": int8_placement["name"], "float_layers": int8_placement["float_layers"]},
            "tensorrt": {"model": "tensorrt/model.onnx", "placement": int8_placement["name"]},
            "layers": decisions,
        },
    }
