"""Quantization-aware distillation (QAD): fine-tune the student as its INT8 form computes, against
the float teacher, label-free; then emit the same QDQ form again.

    leaneye-compress qad --checkpoint distill/model.pt --teacher T.pt --calibration calibrate/ --out DIR

1. The student's FP32 ONNX export (stages/export.py `onnx_bytes`, as calibrate's engine was made)
   gives the INT8 placement's Conv nodes (calibrate's record: which stay float) and, through each
   Conv's weight initializer (`model.<module>.weight`: the exporter names it after the parameter),
   the LeanDet convolution it is.
2. BatchNorm is folded into its convolution (the exporter folds it too, so the weights trained are
   the weights the QDQ model quantizes) and frozen. Each quantized convolution fake-quantizes its
   input per tensor with the range cache's fixed range (calibrate's ranges.json, in the engine's
   flavour: U8 asymmetric for ort-cpu, S8 symmetric for tensorrt) and its weight per output
   channel, symmetric int8, as ONNX Runtime's quantizer computes them.
3. Training is distillation's (stages/distill.py `Distiller`: same losses, same step) from the
   float teacher on label-free frames; the EMA weights are exported to FP32 ONNX and emitted as
   QDQ with the same ranges and placement (quant `emit_qdq`).

out/ is an engine directory (manifest precision int8, calibrate's emitter flavour) with
tensorrt/model.onnx (S8S8), ranges.json (calibrate's, unchanged), model.pt (the fine-tuned weights,
BatchNorm folded) and record.json: held-out mAP and agreement with the FP32 student of PTQ (the
same placement without QAD) and of QAD, and how much of what PTQ lost QAD recovered.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from leaneye.engine import load_manifest, tool_versions, write_engine
from leaneye.errors import LeanEyeError
from leaneye.eval.protocol import EVAL_PROTOCOL

from ..artifacts import read_record, run_stage
from ..checkpoint import load_model, model_payload, save_checkpoint
from ..config import bounded, to_mapping
from ..data import render_scene_set
from ..frames import frames_inputs
from ..models import contract
from ..models.detector import ConvBNReLU, LeanDet, layer_channels
from .distill import DistillConfig, Distiller, Processes, scene_set_config, training_device, training_frames
from .train import default_work_dir

STAGE = "qad"
ONNX_PREFIX = "model."  # stages/export.py exports DecodedOutputs(model): parameters are "model.<name>"
WEIGHT_RANGE = (-127, 127)  # ONNX Runtime's symmetric int8 (weights, and TensorRT's activations)


@dataclass(frozen=True)
class QADConfig:
    # Distillation's config: frames, held-out scenes, losses; a short run at a small learning rate.
    distill: DistillConfig = DistillConfig(iterations=300, lr=1e-4, warmup=10, checkpoint_every=50)
    threads: int = bounded(2, low=0)  # ONNX Runtime threads for the held-out evaluation (0 = its default)


# --- the fake-quantized student --------------------------------------------------------------------


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that always uses its stored statistics (after folding: a bias) and never updates them."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class FakeQuantConv2d(nn.Conv2d):
    """A Conv2d computing as its QDQ form: the input quantized per tensor with a fixed scale and
    zero point, the weight per output channel, symmetric int8 (straight-through gradients)."""

    input_quant: tuple = (1.0, 0, 0, 255)  # scale, zero point, qmin, qmax

    def forward(self, x):
        scale, zero_point, qmin, qmax = self.input_quant
        x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        weight = self.weight
        low, high = WEIGHT_RANGE
        channel_scale = (weight.detach().abs().amax((1, 2, 3)) / high).clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        weight = torch.fake_quantize_per_channel_affine(weight, channel_scale.float(), zero, 0, low, high)
        return self._conv_forward(x, weight, self.bias)


def input_quantization(low: float, high: float, flavour: str) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of a tensor with range [low, high], as ONNX Runtime's
    quantizer computes them: U8 asymmetric for ort-cpu, S8 symmetric (zero point 0) for tensorrt."""
    low, high = min(low, 0.0), max(high, 0.0)
    if flavour == "tensorrt":
        qmin, qmax = WEIGHT_RANGE
        scale = max(abs(low), abs(high)) * 2 / (qmax - qmin)
        return (float(np.float32(scale)) or 1.0, 0, qmin, qmax)
    qmin, qmax = 0, 255
    scale = (high - low) / (qmax - qmin)
    if np.float32(scale) < np.finfo(np.float32).tiny:
        return (1.0, 0, qmin, qmax)
    return (float(np.float32(scale)), int(np.clip(round(qmin - low / scale), qmin, qmax)), qmin, qmax)


def fold_batch_norm(model: LeanDet) -> LeanDet:
    """Fold every ConvBNReLU's BatchNorm into its convolution (the BatchNorm is left as a frozen
    bias), in place: the same function, and the convolution's weight is the one the export holds."""
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, ConvBNReLU):
                continue
            conv, norm = module[0], module[1]
            factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            conv.weight.mul_(factor[:, None, None, None])
            frozen = FrozenBatchNorm2d(norm.num_features, norm.eps).to(norm.weight.device)
            frozen.bias.copy_(norm.bias - norm.running_mean * factor)
            frozen.running_var.fill_(1.0 - norm.eps)  # running_var + eps == 1: the exporter's fold multiplies by 1
            frozen.weight.requires_grad_(False)
            module.register_module("1", frozen)
    return model


def conv_modules(onnx_model) -> dict[str, tuple[str, str]]:
    """{Conv node name: (LeanDet module name, input tensor name)} from the weight initializers' names."""
    mapping = {}
    for node in onnx_model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        if not (weight.startswith(ONNX_PREFIX) and weight.endswith(".weight")):
            raise LeanEyeError(
                f"Conv node {node.name}: weight {weight!r} is not named after a LeanDet parameter; "
                "expected an export by leaneye-compress (model.<module>.weight)"
            )
        mapping[node.name] = (weight[len(ONNX_PREFIX) : -len(".weight")], node.input[0])
    return mapping


def fake_quantized(model: LeanDet, onnx_model, ranges, flavour: str, float_layers) -> tuple[LeanDet, list[str]]:
    """`model` (BatchNorm folded) with every Conv of the placement that is not in `float_layers`
    made a FakeQuantConv2d; returns it and the names of the convolutions quantized."""
    quantized = []
    for node_name, (module_name, tensor) in conv_modules(onnx_model).items():
        if node_name in float_layers:
            continue
        conv = model.get_submodule(module_name)
        if tensor not in ranges.ranges:
            raise LeanEyeError(f"ranges: no calibration range for tensor {tensor!r} (input of {node_name})")
        replacement = FakeQuantConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        ).to(conv.weight.device)
        replacement.load_state_dict(conv.state_dict())
        replacement.input_quant = input_quantization(*ranges.ranges[tensor], flavour)
        parent, _, child = module_name.rpartition(".")
        model.get_submodule(parent).register_module(child, replacement)
        quantized.append(module_name)
    return model, quantized


def plain(model: LeanDet, state_dict: dict) -> LeanDet:
    """A plain LeanDet (Conv2d, BatchNorm2d) at `model`'s widths holding `state_dict`: what exports."""
    clean = LeanDet(model.config, layer_channels(model))
    clean.load_state_dict({k: v.detach().cpu() for k, v in state_dict.items()})
    return clean.eval()


# --- held-out scoring through ONNX Runtime -----------------------------------------------------------


def _run(model_bytes: bytes, manifest, heldout, threads: int) -> tuple[list, dict]:
    """The model's raw outputs on the held-out frames (ONNX Runtime) and its detections."""
    from ..quant.measure import run_frames
    from .calibrate import postprocessed_detections

    outputs = run_frames(model_bytes, manifest.input.name, contract.network_input(heldout.images), threads)
    return outputs, postprocessed_detections(outputs, manifest, [frame.image for frame in heldout.frames])


def _scores(truth, reference: dict, candidates: dict, bootstrap: int) -> dict:
    """mAP with intervals and agreement with `reference` (the FP32 student) of each candidate."""
    from leaneye.eval import agreement, evaluate

    return {
        name: {
            **evaluate(truth, dets, bootstrap=bootstrap).to_dict(),
            "agreement_with_fp32": agreement(reference, dets).to_dict(),
        }
        for name, dets in candidates.items()
    }


# --- the stage -------------------------------------------------------------------------------------


def _calibration(calibration: Path) -> tuple[dict, list[str], str]:
    from ..quant import chosen_float_layers

    record = read_record(calibration)
    float_layers = list(chosen_float_layers(calibration))
    flavour = (record.get("config") or {}).get("emitter", "ort-cpu")
    return record, float_layers, flavour


def qad(
    config: QADConfig,
    checkpoint: Path,
    teacher: Path,
    calibration: Path,
    out: Path,
    force: bool = False,
    work_dir: Path | None = None,
) -> tuple[dict, bool]:
    """Fine-tune `checkpoint` (the calibrated student) with fake quantization at the INT8 placement
    of the calibrate output `calibration`, against `teacher`; write an INT8 engine directory to `out`."""
    calibration = Path(calibration)
    _calibration(calibration)  # a calibrate output, before anything runs
    cache_dir = (Path(work_dir) if work_dir is not None else default_work_dir(out)) / "cache"
    inputs = {
        "checkpoint": Path(checkpoint),
        "teacher": Path(teacher),
        "calibration/ranges.json": calibration / "ranges.json",
        "calibration/record.json": calibration / "record.json",
        **frames_inputs(config.distill.frames),
    }
    return run_stage(
        STAGE,
        out,
        inputs,
        to_mapping(config),
        lambda folder: _qad_into(folder, config, Path(checkpoint), Path(teacher), calibration, cache_dir),
        force=force,
        versions=("leaneye", "leaneye-compress", "torch", "onnx", "onnxruntime"),
    )


def _qad_into(folder: Path, config: QADConfig, checkpoint: Path, teacher_path: Path, calibration: Path, cache: Path):
    import hashlib

    from leaneye.scenes.dataset import scene_ground_truth

    from ..quant import emit_qdq, load_ranges, prepare_model, resolve_layers
    from ..quant.measure import output_error
    from .export import onnx_bytes

    record, float_layers, flavour = _calibration(calibration)
    ranges = load_ranges(calibration / "ranges.json")
    manifest = load_manifest(calibration)
    student, data = load_model(checkpoint)
    teacher, teacher_data = load_model(teacher_path)
    class_names = list(data["class_names"])
    if list(teacher_data["class_names"]) != class_names or tuple(manifest.class_names) != tuple(class_names):
        raise LeanEyeError(
            f"qad: classes differ between --checkpoint {checkpoint} ({class_names}), --teacher {teacher_path} "
            f"({list(teacher_data['class_names'])}) and --calibration {calibration} ({list(manifest.class_names)})"
        )
    fp32_bytes = onnx_bytes(student.eval())
    same_model = hashlib.sha256(fp32_bytes).hexdigest() == ranges.model_sha256
    fp32_model = prepare_model(fp32_bytes, f"{checkpoint} (exported)")
    resolve_layers(fp32_model, float_layers, f"{calibration}/record.json int8_placement")
    ptq_bytes = emit_qdq(fp32_model, ranges, flavour, float_layers=float_layers).SerializeToString()

    distill_config = config.distill
    input_size = (student.config.input_height, student.config.input_width)
    frames = training_frames(distill_config, input_size, cache, minimum=distill_config.batch_size)
    heldout = render_scene_set(
        scene_set_config(distill_config.heldout, distill_config.frame_size, input_size),
        cache,
        desc="render held-out scenes",
    )

    trained, quantized = fake_quantized(fold_batch_norm(student), fp32_model, ranges, flavour, set(float_layers))
    distiller = Distiller(trained, teacher, distill_config, Processes(device=training_device(distill_config.device)))
    losses: list[float] = []
    distiller.run(frames, 0, f"qad ({len(quantized)} convolutions int8)", lambda done, p: losses.append(p["loss"]))
    tuned = plain(trained, distiller.ema.state_dict())
    tuned_fp32 = prepare_model(onnx_bytes(tuned), "QAD export")
    qad_model = emit_qdq(tuned_fp32, ranges, flavour, float_layers=float_layers)
    qad_bytes = qad_model.SerializeToString()

    print("qad: scoring FP32, PTQ and QAD on the held-out scenes", file=sys.stderr)
    truth = scene_ground_truth(heldout.frames)
    runs = {
        name: _run(model_bytes, manifest, heldout, config.threads)
        for name, model_bytes in (("fp32", fp32_model.SerializeToString()), ("ptq", ptq_bytes), ("qad", qad_bytes))
    }
    dets = {name: found for name, (_, found) in runs.items()}
    scores = _scores(truth, dets["fp32"], dets, distill_config.bootstrap)
    for name in ("ptq", "qad"):  # how far the raw outputs moved from FP32's (quant/measure.py): 0 = identical
        scores[name]["output_error_vs_fp32"] = output_error(runs["fp32"][0], runs[name][0])
    metric = "mAP50-95"
    lost = scores["fp32"][metric] - scores["ptq"][metric]
    gained = scores["qad"][metric] - scores["ptq"][metric]
    recovered = gained / lost if lost > 0 else None
    verdict = _verdict(scores, metric, lost, gained)
    print(f"qad: {verdict}", file=sys.stderr)
    paired = {}
    if distill_config.bootstrap:
        from leaneye.eval import paired_difference

        paired = {
            "qad_minus_ptq": paired_difference(truth, dets["ptq"], dets["qad"], bootstrap=distill_config.bootstrap),
            "qad_minus_fp32": paired_difference(truth, dets["fp32"], dets["qad"], bootstrap=distill_config.bootstrap),
        }
        paired = {k: v.to_dict() for k, v in paired.items()}

    producer = {
        "tool": "leaneye-compress qad",
        "versions": tool_versions("leaneye-compress", "torch", "onnx", "onnxruntime"),
        "source_checkpoint": str(checkpoint),
        "calibration": str(calibration),
        "emitter": flavour,
        "float_layers": sorted(float_layers),
    }
    write_engine(folder, qad_bytes, {**manifest.to_dict(), "precision": "int8", "producer": producer}, True)
    (folder / "ranges.json").write_bytes((calibration / "ranges.json").read_bytes())
    (folder / "tensorrt").mkdir()
    tensorrt = emit_qdq(tuned_fp32, ranges, "tensorrt", float_layers=float_layers)
    (folder / "tensorrt" / "model.onnx").write_bytes(tensorrt.SerializeToString())
    save_checkpoint(folder / "model.pt", {**model_payload(tuned, class_names), "meta": {"batch_norm": "folded"}})
    window = max(1, len(losses) // 10)
    return {
        "metrics": {
            "protocol": f"generated scenes by {EVAL_PROTOCOL.describe()}",
            "heldout_frames": len(heldout.images),
            "fp32": scores["fp32"],
            "ptq": scores["ptq"],
            "qad": scores["qad"],
            **({"paired": paired} if paired else {}),
            "metric": metric,
            "ptq_lost_points": round(100 * lost, 2),
            "qad_gained_points": round(100 * gained, 2),
            "recovered_fraction": None if recovered is None else round(recovered, 3),
            "verdict": verdict,
        },
        "details": {
            "emitter": flavour,
            "placement": {"float_layers": float_layers, "int8_convolutions": quantized},
            "calibration_record": str(calibration / "record.json"),
            "calibrated_model_is_this_checkpoint": same_model,
            "frames": frames.sources,
            "heldout_seeds": [
                distill_config.heldout.first_seed,
                distill_config.heldout.first_seed + distill_config.heldout.sequences - 1,
            ],
            "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:])),
        },
    }


def _verdict(scores: dict, metric: str, lost: float, gained: float) -> str:
    fp32, ptq, qad = (scores[k][metric] for k in ("fp32", "ptq", "qad"))
    line = f"held-out {metric}: FP32 {fp32:.3f}, PTQ {ptq:.3f}, QAD {qad:.3f}"
    if lost <= 0:
        return f"{line}; PTQ lost nothing to recover (QAD {100 * gained:+.1f} points against PTQ)"
    return f"{line}; PTQ lost {100 * lost:.1f} points, QAD recovered {100 * gained:+.1f} ({100 * gained / lost:.0f} %)"
