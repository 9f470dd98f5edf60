"""Distillation stage: a teacher LeanDet teaches a student (a pruned model or a preset) on frames
that need no labels.

    leaneye-compress distill --teacher T.pt --student S.pt|PRESET --out DIR [--config YAML] [--data PATH ...]

Losses, on what the student and the teacher see of the same letterboxed frame:
- class scores: binary cross-entropy of the student's logits against the teacher's sigmoid
  probabilities (reported minus the teacher's own entropy, so 0 means identical);
- boxes: GIoU (or L1 in units of the cell's stride) against the teacher's boxes, each cell weighted
  by the teacher's confidence there (its highest class probability);
  both summed over cells and divided by the batch's total teacher confidence;
- optionally the neck features (LeanDet's t3, b4, b5): mean squared error after a 1×1 adapter
  where the widths differ (the adapters are trained with the student, never saved into it);
- optionally the ground-truth detection loss (models/loss.py) on frames that have labels
  (generated scenes).
Frames come from `FramesConfig` (image folders, videos, rosbag image topics, generated scenes);
scoring uses only the held-out generated scenes (seeds 9 000 000 on), which distillation never sees.

Resumable like training: state in the work folder (default OUT.work) every `checkpoint_every`
iterations, written atomically, resumed automatically when it was made from the same inputs and
config. The student's weights are kept as an EMA; out/model.pt holds the EMA weights at the
student's own widths.

Under `torchrun` (WORLD_SIZE > 1) every process takes its slice of each global batch, gradients
are averaged by DistributedDataParallel and BatchNorm statistics are taken over the global batch
(`GlobalBatchNorm2d`), so N processes make the step one process makes on the same global batch
(tested in float64 to 1e-7; in float32, rounding differences grow through BatchNorm and Adam's
first steps); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from leaneye.errors import LeanEyeError
from leaneye.eval.protocol import EVAL_PROTOCOL

from ..artifacts import describe_inputs, run_stage
from ..checkpoint import build_model, load_model, model_payload, read_checkpoint, save_checkpoint
from ..config import bounded, positive, to_mapping
from ..data import SceneSetConfig, render_scene_set
from ..frames import DEFAULT_FRAME_SIZE, FramesConfig, GeneratedFrames, frames_inputs
from ..models import contract
from ..models.detector import PRESETS, LeanDet, count_parameters, gflops, preset_config
from ..models.loss import LossConfig, detection_loss, giou_loss
from .train import ScenesConfig, default_work_dir, ema_update, learning_rate_at, param_groups, training_batch

STAGE = "distill"
HELDOUT_FIRST_SEED = 9_000_000  # EVAL.md's held-out generated scenes: never used to distill


@dataclass(frozen=True)
class DistillLossConfig:
    cls_weight: float = bounded(1.0, low=0)
    box_weight: float = bounded(2.5, low=0)
    box_loss: str = bounded("giou", choices=("giou", "l1"))
    feature_weight: float = bounded(0.0, low=0)  # 0: no neck-feature term
    truth_weight: float = bounded(0.0, low=0)  # 0: no ground-truth term (used on labelled frames only)
    truth: LossConfig = LossConfig()


@dataclass(frozen=True)
class DistillConfig:
    # Frames to distill on; generated scenes carry labels (for `loss.truth_weight`), the rest do not.
    frames: FramesConfig = FramesConfig(
        scenes=GeneratedFrames(first_seed=1000, sequences=250, frames_per_sequence=8, frame_step=4)
    )
    # width, height of generated frames (distillation and held-out)
    frame_size: tuple[int, int] = bounded(DEFAULT_FRAME_SIZE, low=16, high=contract.MAX_INPUT_SIDE)
    # Scored only: seeds never used for training, distillation or calibration (EVAL.md, Splits).
    heldout: ScenesConfig = ScenesConfig(
        first_seed=HELDOUT_FIRST_SEED, sequences=60, frames_per_sequence=5, frame_step=10
    )
    iterations: int = positive(1500)
    batch_size: int = positive(16)  # the global batch: split across torchrun's processes
    lr: float = positive(1e-3)
    weight_decay: float = bounded(0.05, low=0)
    warmup: int = bounded(50, low=0)
    ema_decay: float = bounded(0.999, low=0, high=1)
    checkpoint_every: int = positive(50)
    seed: int = bounded(0, low=0)
    bootstrap: int = bounded(EVAL_PROTOCOL.bootstrap, low=0)
    device: str = bounded("auto", choices=("auto", "cpu", "cuda"))
    loss: DistillLossConfig = DistillLossConfig()


# --- data ----------------------------------------------------------------------------------------


@dataclass
class TrainingFrames:
    """Letterboxed frames (N, H, W, 3) uint8 BGR to distill on, with ground truth in network pixels
    where a frame has it (`labelled`); what train.py's `training_batch` samples from."""

    images: np.ndarray
    boxes: list
    labels: list
    ignore: list
    labelled: np.ndarray  # (N,) bool
    sources: str


def scene_set_config(scenes, frame_size, input_size) -> SceneSetConfig:
    return SceneSetConfig(
        scenes.first_seed,
        scenes.sequences,
        scenes.frames_per_sequence,
        scenes.frame_step,
        tuple(frame_size),
        tuple(input_size),
    )


def _check_splits(config: DistillConfig) -> None:
    scenes, heldout = config.frames.scenes, config.heldout
    if scenes.sequences and scenes.first_seed < heldout.first_seed + heldout.sequences:
        if scenes.first_seed + scenes.sequences > heldout.first_seed:
            raise LeanEyeError(
                f"distill frames.scenes seeds {scenes.first_seed}..{scenes.first_seed + scenes.sequences - 1} overlap "
                f"the held-out seeds {heldout.first_seed}..{heldout.first_seed + heldout.sequences - 1}; "
                "frames used to distill are never scored"
            )


def training_frames(
    config: DistillConfig, input_size: tuple[int, int], cache_dir: Path | None = None, minimum: int = 1
) -> TrainingFrames:
    """The frames `config.frames` names, letterboxed to `input_size` (height, width)."""
    from ..frames import letterboxed, load_frames

    _check_splits(config)
    empty_boxes, empty_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    images, boxes, labels, ignore, labelled, sources = [], [], [], [], [], []
    if config.frames.paths:
        unlabelled = dataclasses.replace(config.frames, scenes=GeneratedFrames())
        frames = load_frames(unlabelled, "distill frames.paths")
        images.append(letterboxed([f.image for f in frames], input_size))
        n = len(frames)
        boxes += [empty_boxes] * n
        labels += [empty_labels] * n
        ignore += [empty_boxes] * n
        labelled += [False] * n
        sources.append(f"{n} frames from {', '.join(config.frames.paths)}")
    scenes = config.frames.scenes
    if scenes.sequences:
        scene_set = render_scene_set(
            scene_set_config(scenes, config.frame_size, input_size), cache_dir, desc="render distillation scenes"
        )
        images.append(scene_set.images)
        boxes += scene_set.boxes
        labels += scene_set.labels
        ignore += scene_set.ignore
        labelled += [True] * len(scene_set.images)
        last = scenes.first_seed + scenes.sequences - 1
        sources.append(f"{len(scene_set.images)} generated frames (seeds {scenes.first_seed}..{last})")
    total = sum(len(i) for i in images)
    if total < minimum:
        described = "; ".join(sources) or "no sources (no paths, no generated scenes)"
        raise LeanEyeError(f"distill frames: found {total} frames in {described}, need at least {minimum}")
    return TrainingFrames(np.concatenate(images), boxes, labels, ignore, np.array(labelled), "; ".join(sources))


# --- processes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """This process's place among torchrun's (rank 0 of 1 without torchrun) and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    stats_group: object = None  # process group for BatchNorm statistics (apart from DDP's gradients)

    @property
    def distributed(self) -> bool:
        return self.world > 1


def training_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise LeanEyeError("distill device cuda: no CUDA device is available here; use device auto or cpu")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def _processes(device: str):
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); leave it on the way out."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Processes(device=training_device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = training_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), chosen, dist.new_group())
    finally:
        if created:
            dist.destroy_process_group()


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the sum's gradient reaches every process's share."""

    @staticmethod
    def forward(ctx, tensor, group):
        import torch.distributed as dist

        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        return _SumOverProcesses.apply(grad, ctx.group), None


def _sum_over(processes: Processes, tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverProcesses.apply(tensor, processes.stats_group) if processes.distributed else tensor


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch, summed over every process, as
    one process's BatchNorm2d takes them over the whole batch. (torch's SyncBatchNorm refuses CPU
    tensors.)"""

    processes: Processes = Processes()

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = x.numel() // x.shape[1] * self.processes.world
        mean = _sum_over(self.processes, x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = _sum_over(self.processes, centred.square().sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * count / max(count - 1, 1), momentum)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def _with_global_batch_norm(model: nn.Module, processes: Processes) -> nn.Module:
    """`model` with every BatchNorm2d made a GlobalBatchNorm2d (same state, same state_dict keys)."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            replacement.to(module.weight.device, module.weight.dtype).load_state_dict(module.state_dict())
            replacement.processes = processes
            parent_name, _, child = name.rpartition(".")
            model.get_submodule(parent_name).register_module(child, replacement)
    return model


# --- the loss --------------------------------------------------------------------------------------

NECK = ("top_down3", "bottom_up4", "bottom_up5")  # LeanDet._features' outputs t3, b4, b5


def _outputs(model: nn.Module, images: torch.Tensor, with_features: bool) -> tuple:
    """(class logits [B, N, C], boxes [B, N, 4], neck outputs or []) of a LeanDet-like model, whose
    forward returns the first two."""
    features: list = []
    handles = []
    if with_features:
        handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o: features.append(o)) for name in NECK]
    try:
        cls, boxes = model(images)
    finally:
        for h in handles:
            h.remove()
    return cls, boxes, features


class DistilledStudent(nn.Module):
    """The student with its feature adapters: what the optimizer trains and DDP wraps."""

    def __init__(self, student: nn.Module, adapters: nn.ModuleList | None):
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, images):
        cls, boxes, features = _outputs(self.student, images, self.adapters is not None)
        if self.adapters is not None:
            features = [adapter(f) for adapter, f in zip(self.adapters, features)]
        return cls, boxes, features


def _neck_widths(model: nn.Module) -> list[int]:
    return [model.get_submodule(name).merge[0].out_channels for name in NECK]


def _adapters(student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """A 1×1 convolution from each student neck width to the teacher's, identity where they agree."""
    return nn.ModuleList(
        nn.Identity() if s == t else nn.Conv2d(s, t, 1) for s, t in zip(_neck_widths(student), _neck_widths(teacher))
    )


def distillation_loss(
    student: tuple,
    teacher: tuple,
    strides: torch.Tensor,
    config: DistillLossConfig,
    global_batch: int,
    processes: Processes = Processes(),
    targets: list | None = None,
    labelled: np.ndarray | None = None,
    points: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The distillation loss of this process's slice of a global batch of `global_batch` frames.

    Scaled so that the mean over processes (what DDP does to gradients) is the loss of the whole
    global batch: per-frame terms carry world / global_batch, cell terms divide by the teacher's
    confidence summed over every process.
    """
    s_cls, s_boxes, s_features = student
    t_cls, t_boxes, t_features = teacher
    t_prob = t_cls.sigmoid()
    confidence = t_prob.amax(-1)
    norm = _sum_over(processes, confidence.sum().detach()).clamp(min=1.0)
    world = processes.world
    # minus the teacher's own entropy: the same gradient, and 0 when the student matches
    bce = F.binary_cross_entropy_with_logits(s_cls, t_prob, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t_cls, t_prob, reduction="none")
    loss_cls = (bce - entropy).sum() * world / norm
    if config.box_loss == "giou":
        per_cell = giou_loss(s_boxes.reshape(-1, 4), t_boxes.reshape(-1, 4)).view_as(confidence)
    else:
        per_cell = (s_boxes - t_boxes).abs().sum(-1) / strides
    loss_box = (per_cell * confidence).sum() * world / norm
    total = config.cls_weight * loss_cls + config.box_weight * loss_box
    parts = {"cls": loss_cls.item(), "box": loss_box.item()}
    per_frame = world / global_batch
    if config.feature_weight > 0:
        loss_features = (
            sum((s - t).square().flatten(1).mean(1).sum() for s, t in zip(s_features, t_features)) * per_frame
        )
        total = total + config.feature_weight * loss_features
        parts["features"] = loss_features.item()
    if config.truth_weight > 0 and targets is not None:
        truth_terms = [
            detection_loss(s_cls[k : k + 1], s_boxes[k : k + 1], points, strides, [targets[k]], config.truth)[0]
            for k in range(len(targets))
            if labelled[k]
        ]
        loss_truth = sum(truth_terms) * per_frame if truth_terms else s_cls.sum() * 0.0
        total = total + config.truth_weight * loss_truth
        parts["truth"] = loss_truth.item()
    return total, parts


# --- the step, the loop ------------------------------------------------------------------------------


class Distiller:
    """One distillation run's trainable state and its step; the stage and `distill_in_memory` both
    drive `run`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, processes: Processes):
        if config.batch_size % processes.world:
            raise LeanEyeError(
                f"distill batch_size {config.batch_size}: expected a multiple of the {processes.world} processes"
            )
        self.config, self.processes = config, processes
        device = processes.device
        self.teacher = teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.ema = copy.deepcopy(student).to(device, memory_format=torch.channels_last).eval()
        # one process: torch's own BatchNorm, the same statistics (and about twice as fast on CPU)
        if processes.distributed:
            student = _with_global_batch_norm(student, processes)
        self.student = student.to(device, memory_format=torch.channels_last)
        dtype = next(student.parameters()).dtype
        adapters = _adapters(student, teacher).to(device, dtype) if config.loss.feature_weight > 0 else None
        self.trained = DistilledStudent(self.student, adapters).train()
        self.module = self.trained
        if processes.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # buffers (BatchNorm running statistics) are equal on every process by construction
            self.module = DistributedDataParallel(
                self.trained, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        self.optimizer = torch.optim.AdamW(param_groups(self.trained, config.weight_decay), lr=config.lr)

    def state(self) -> dict:
        return {
            "trained": self.trained.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.trained.load_state_dict(state["trained"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self, frames: TrainingFrames, iteration: int) -> dict:
        """One optimizer step on global batch `iteration` (the same frames and augmentation on every process)."""
        config, processes = self.config, self.processes
        rng = np.random.default_rng([config.seed, iteration])  # per-iteration stream: resuming replays exactly
        indices = rng.integers(0, len(frames.images), config.batch_size)
        images, targets = training_batch(frames, indices, rng)
        share = config.batch_size // processes.world
        mine = slice(processes.rank * share, (processes.rank + 1) * share)
        dtype = next(self.student.parameters()).dtype
        images = images[mine].to(processes.device, dtype).contiguous(memory_format=torch.channels_last)
        targets = [{k: v.to(processes.device) for k, v in t.items()} for t in targets[mine]]
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(config, iteration)
        with_features = config.loss.feature_weight > 0
        with torch.no_grad():
            teacher_out = _outputs(self.teacher, images, with_features)
        student_out = self.module(images)
        points, strides = LeanDet.anchors(images.shape[2], images.shape[3], images.device)
        loss, parts = distillation_loss(
            student_out,
            teacher_out,
            strides,
            config.loss,
            config.batch_size,
            processes,
            targets,
            frames.labelled[indices][mine],
            points,
        )
        if not torch.isfinite(loss):
            raise LeanEyeError(f"distillation diverged at iteration {iteration} (loss {float(loss)}); lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trained.parameters(), 10.0)
        self.optimizer.step()
        ema_update(self.ema, self.student, config.ema_decay * (1 - math.exp(-(iteration + 1) / 200)))
        return {"loss": loss.item(), **parts}

    def run(
        self,
        frames: TrainingFrames,
        start: int,
        desc: str,
        after_step: Callable[[int, dict], None] | None = None,
    ) -> None:
        """Steps `start` .. config.iterations - 1 with a progress bar (rank 0's); `after_step(done, parts)`."""
        from tqdm import tqdm

        config = self.config
        running = None
        with tqdm(
            total=config.iterations,
            initial=start,
            desc=desc,
            unit="it",
            file=sys.stderr,
            disable=self.processes.rank != 0,
        ) as bar:
            for iteration in range(start, config.iterations):
                parts = self.step(frames, iteration)
                running = parts["loss"] if running is None else 0.95 * running + 0.05 * parts["loss"]
                bar.set_postfix(loss=f"{running:.3f}", cls=f"{parts['cls']:.3f}", box=f"{parts['box']:.3f}")
                bar.update(1)
                if after_step is not None:
                    after_step(iteration + 1, parts)


_FRAMES_IN_MEMORY: dict = {}  # (frames config, frame size, input size) -> TrainingFrames, for repeated recoveries


def distill_in_memory(
    student: nn.Module, teacher: nn.Module, config: DistillConfig, iterations: int, desc: str = "distill"
) -> dict:
    """Distill `student` from `teacher` for `iterations` steps in memory (no files: a pruning step's
    brief recovery). `student` ends with the EMA weights; returns the loss history."""
    input_size = _input_size(student)
    key = (config.frames, tuple(config.frame_size), input_size)
    if key not in _FRAMES_IN_MEMORY:
        _FRAMES_IN_MEMORY.clear()
        _FRAMES_IN_MEMORY[key] = training_frames(config, input_size, minimum=1)
    frames = _FRAMES_IN_MEMORY[key]
    run_config = dataclasses.replace(config, iterations=iterations, warmup=min(config.warmup, iterations // 4))
    was_training = student.training
    distiller = Distiller(copy.deepcopy(student), teacher, run_config, Processes(device=training_device(config.device)))
    losses: list[float] = []
    distiller.run(frames, 0, desc, lambda done, parts: losses.append(parts["loss"]))
    device = next(student.parameters()).device
    student.load_state_dict({k: v.to(device) for k, v in distiller.ema.state_dict().items()})
    student.train(was_training)
    window = max(1, len(losses) // 10)
    return {
        "iterations": iterations,
        "loss_first": float(np.mean(losses[:window])) if losses else None,
        "loss_last": float(np.mean(losses[-window:])) if losses else None,
    }


def _input_size(model: nn.Module) -> tuple[int, int]:
    config = getattr(model, "config", None)
    if config is None:
        return contract.INPUT_SIZE
    return (config.input_height, config.input_width)


# --- held-out scoring ----------------------------------------------------------------------------


@torch.no_grad()
def heldout_distance(
    student: nn.Module, teacher: nn.Module, images: np.ndarray, config: DistillLossConfig, batch_size: int = 16
) -> dict:
    """Mean class and box distillation loss (no feature or ground-truth terms) of `student` to
    `teacher` over `images` (letterboxed uint8 frames): 0 for a student identical to the teacher."""
    totals = {"cls": 0.0, "box": 0.0}
    config = dataclasses.replace(config, feature_weight=0.0, truth_weight=0.0)
    was_training = student.training
    student.eval()
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(contract.network_input(images[start : start + batch_size]))
            _, strides = LeanDet.anchors(batch.shape[2], batch.shape[3], batch.device)
            _, parts = distillation_loss(
                _outputs(student, batch, False), _outputs(teacher, batch, False), strides, config, len(batch)
            )
            for k in totals:
                totals[k] += parts[k] * len(batch)
    finally:
        student.train(was_training)
    means = {k: v / len(images) for k, v in totals.items()}
    means["total"] = config.cls_weight * means["cls"] + config.box_weight * means["box"]
    return means


def score_against_teacher(student: LeanDet, teacher: LeanDet, heldout, class_names, bootstrap: int) -> dict:
    """mAP of `student` on the held-out scenes with intervals, its paired difference to `teacher`,
    and its label-free agreement with `teacher` (EVAL.md)."""
    from leaneye.eval import agreement, evaluate, paired_difference
    from leaneye.scenes.dataset import scene_ground_truth

    from ..evaluate import predict

    truth = scene_ground_truth(heldout.frames)
    student_dets = predict(student, heldout, class_names)
    teacher_dets = predict(teacher, heldout, class_names)
    scored = {
        **evaluate(truth, student_dets, bootstrap=bootstrap).to_dict(),
        "agreement_with_teacher": agreement(teacher_dets, student_dets).to_dict(),
    }
    if bootstrap:
        scored["paired_difference_to_teacher"] = paired_difference(
            truth, teacher_dets, student_dets, bootstrap=bootstrap
        ).to_dict()
    return scored


# --- the stage ---------------------------------------------------------------------------------


def _student_source(student: Path | str) -> tuple[Path | None, str]:
    """(checkpoint, "") for a file, (None, preset) for a preset name."""
    path = Path(student)
    if path.is_file():
        return path, ""
    if str(student) in PRESETS:
        return None, str(student)
    raise LeanEyeError(f"--student {student}: no such checkpoint, and not a preset ({', '.join(PRESETS)})")


def distill(
    config: DistillConfig,
    teacher: Path,
    student: Path | str,
    out: Path,
    force: bool = False,
    work_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict, bool]:
    """Run the distillation stage into `out` (skipped when `out` holds a run of the same inputs and config).

    `student`: a LeanDet checkpoint (a pruned one keeps its widths) or a preset name (from scratch).
    `work_dir` (default OUT.work) keeps the resumable state; `cache_dir` (default WORK_DIR/cache)
    the rendered scenes. Under torchrun every process calls this; rank 0 writes and returns the
    record, the others return ({}, skipped).
    """
    _check_splits(config)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else work_dir / "cache"
    student_path, preset = _student_source(student)
    inputs = {"teacher": Path(teacher), **({"student": student_path} if student_path else {})}
    inputs.update(frames_inputs(config.frames))
    described = describe_inputs(inputs)
    mapping = {**to_mapping(config), **({"student_preset": preset} if preset else {})}
    with _processes(config.device) as processes:
        job = _Job(config, Path(teacher), student_path, preset, work_dir / "last.pt", cache_dir, processes, mapping)
        if processes.rank != 0:
            go = _broadcast_flag(processes, False)
            if go:
                job.produce(None, described)
            return {}, not go
        announced = False

        def produce(folder: Path) -> dict:
            nonlocal announced
            announced = True
            _broadcast_flag(processes, True)
            return job.produce(folder, described)

        try:
            return run_stage(
                STAGE,
                out,
                inputs,
                mapping,
                produce,
                force=force,
                versions=("leaneye", "leaneye-compress", "torch", "numpy"),
            )
        finally:
            if not announced:  # skipped or refused: the other processes stop too
                _broadcast_flag(processes, False)


def _broadcast_flag(processes: Processes, value: bool) -> bool:
    """Rank 0's `value` on every process (whether rank 0 is running the stage)."""
    if not processes.distributed:
        return value
    import torch.distributed as dist

    flag = torch.tensor([int(value)], device=processes.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


@dataclass
class _Job:
    config: DistillConfig
    teacher: Path
    student: Path | None
    preset: str
    state_path: Path
    cache_dir: Path
    processes: Processes
    mapping: dict

    def _models(self) -> tuple[LeanDet, LeanDet, list]:
        teacher, data = load_model(self.teacher)
        class_names = list(data["class_names"])
        size = (teacher.config.input_height, teacher.config.input_width)
        if self.student is None:
            torch.manual_seed(self.config.seed)
            return LeanDet(preset_config(self.preset, len(class_names), *size)), teacher, class_names
        student, student_data = load_model(self.student)
        if list(student_data["class_names"]) != class_names:
            raise LeanEyeError(
                f"--student {self.student}: classes {list(student_data['class_names'])} differ from the teacher's "
                f"{class_names} ({self.teacher})"
            )
        student_size = (student.config.input_height, student.config.input_width)
        if student_size != size:
            raise LeanEyeError(
                f"--student {self.student}: input size {student_size} differs from the teacher's {size}; "
                "distillation compares outputs on the same frames"
            )
        return student, teacher, class_names

    def _resumable_state(self, described: dict) -> dict | None:
        if self.processes.rank != 0 or not self.state_path.exists():
            return None
        state = read_checkpoint(self.state_path)
        if state.get("distill_config") != self.mapping or state.get("inputs") != described:
            print(f"{self.state_path}: made from other inputs or another config; starting afresh", file=sys.stderr)
            return None
        return state

    def produce(self, folder: Path | None, described: dict) -> dict:
        config, processes = self.config, self.processes
        torch.set_num_threads(max(1, torch.get_num_threads()))
        student, teacher, class_names = self._models()
        input_size = (student.config.input_height, student.config.input_width)
        frames = training_frames(config, input_size, self.cache_dir, minimum=config.batch_size)
        state = self._resumable_state(described)
        if processes.distributed:
            import torch.distributed as dist

            shared = [state]
            dist.broadcast_object_list(shared, 0)
            state = shared[0]
        if state is not None:
            student = build_model(self.state_path, state)  # its widths; the weights come with the state
        before = None
        if folder is not None:
            heldout = render_scene_set(
                scene_set_config(config.heldout, config.frame_size, input_size),
                self.cache_dir,
                desc="render held-out scenes",
            )
            before = state["before"] if state is not None else self._before(student, teacher, heldout, class_names)
        distiller = Distiller(student, teacher, config, processes)
        start, history, window, elapsed = 0, [], [], 0.0
        if state is not None:
            distiller.load_state({k: state[k] for k in ("trained", "ema", "optimizer")})
            start, history, window, elapsed = (
                int(state["iteration"]),
                list(state["history"]),
                list(state["loss_window"]),
                float(state["elapsed_s"]),
            )
            print(f"resuming from {self.state_path} at iteration {start}", file=sys.stderr)
        began = time.perf_counter() - elapsed

        def after_step(done: int, parts: dict) -> None:
            nonlocal window
            window.append(parts["loss"])
            if done % 10 == 0:
                history.append({"iteration": done, "loss": sum(window) / len(window)})  # mean of the last 10
                window = []
            if processes.rank == 0 and (done % config.checkpoint_every == 0 or done == config.iterations):
                ema_cpu = {k: v.cpu() for k, v in distiller.ema.state_dict().items()}
                save_checkpoint(
                    self.state_path,
                    {
                        **model_payload(student, class_names, ema_cpu),
                        **_to_cpu(distiller.state()),
                        "iteration": done,
                        "history": history,
                        "loss_window": window,
                        "elapsed_s": time.perf_counter() - began,
                        "before": before,
                        "distill_config": self.mapping,
                        "inputs": described,
                    },
                )

        distiller.run(frames, start, f"distill {self.preset or self.student.name}", after_step)
        seconds = time.perf_counter() - began
        if folder is None:
            return {}
        ema = distiller.ema.cpu().float()
        distance = heldout_distance(ema, teacher.cpu(), heldout.images, config.loss)
        scored = score_against_teacher(ema, teacher, heldout, class_names, config.bootstrap)
        save_checkpoint(folder / "model.pt", model_payload(ema, class_names))
        return {
            "metrics": {
                "protocol": f"generated scenes by {EVAL_PROTOCOL.describe()}",
                "heldout_frames": len(heldout.images),
                **scored,
                "heldout_distance_to_teacher": distance,
                "before": before,
                "model": {
                    "parameters": count_parameters(ema),
                    "gflops": gflops(ema),
                    "input_size": list(input_size),
                    "teacher_parameters": count_parameters(teacher),
                    "teacher_gflops": gflops(teacher),
                },
            },
            "details": {
                "frames": frames.sources,
                "distill_frames": len(frames.images),
                "heldout_seeds": [config.heldout.first_seed, config.heldout.first_seed + config.heldout.sequences - 1],
                "student": self.preset or str(self.student),
                "processes": processes.world,
                "device": str(processes.device),
                "distill_seconds": round(seconds, 1),
                "torch_threads": torch.get_num_threads(),
                "history": history,
            },
        }

    def _before(self, student: LeanDet, teacher: LeanDet, heldout, class_names) -> dict:
        """The student's distance and agreement to the teacher before distillation (what it recovers from)."""
        from leaneye.eval import agreement

        from ..evaluate import predict

        return {
            "heldout_distance_to_teacher": heldout_distance(student, teacher, heldout.images, self.config.loss),
            "agreement_with_teacher": agreement(
                predict(teacher, heldout, class_names), predict(student, heldout, class_names)
            ).to_dict(),
        }


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
