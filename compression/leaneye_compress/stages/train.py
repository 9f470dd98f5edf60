"""Training stage: procedural scenes → a LeanDet checkpoint, its metrics and a record of the run.

    leaneye-compress train --config compression/configs/teacher.yaml --out DIR [--resume] [--force]

DIR receives `model.pt` (EMA weights), `config.yaml` (the resolved config), `metrics.json`
(held-out evaluation by shared/EVAL.md) and `train.json` (what the stage did). DIR appears only
when the run has finished; until then, resumable state lives in the work folder (`--work-dir`,
default runs/train/<config name>), written atomically every `checkpoint_every` iterations, so
Ctrl-C loses at most that much and `--resume` carries on bit-for-bit from the last state.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from leaneye.atomic import atomic_path, check_output_path
from leaneye.errors import LeanEyeError, first_line
from leaneye.eval.protocol import EVAL_PROTOCOL
from leaneye.scenes.classes import SCENE_CLASSES

from ..checkpoint import build_model, read_checkpoint, save_checkpoint
from ..data import SceneSetConfig, render_scene_set
from ..models.detector import PRESETS, LeanDet, count_parameters, gflops, preset_config
from ..models.loss import LossConfig, detection_loss


@dataclass(frozen=True)
class ScenesConfig:
    first_seed: int = 1000
    sequences: int = 250
    frames_per_sequence: int = 8
    frame_step: int = 4


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "teacher"
    input_size: tuple[int, int] = (192, 640)  # height, width
    frame_size: tuple[int, int] = (1224, 370)  # width, height of the generated frames
    train: ScenesConfig = ScenesConfig()
    # Held out: seeds never used for training or calibration (EVAL.md, Splits).
    heldout: ScenesConfig = ScenesConfig(first_seed=9_000_000, sequences=60, frames_per_sequence=5, frame_step=10)
    iterations: int = 2500
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    ema_decay: float = 0.999
    eval_every: int = 500
    checkpoint_every: int = 50
    seed: int = 0
    bootstrap: int = EVAL_PROTOCOL.bootstrap
    loss: LossConfig = LossConfig()

    def scene_set(self, scenes: ScenesConfig) -> SceneSetConfig:
        return SceneSetConfig(
            scenes.first_seed,
            scenes.sequences,
            scenes.frames_per_sequence,
            scenes.frame_step,
            tuple(self.frame_size),
            tuple(self.input_size),
        )


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise LeanEyeError(f"{where}: expected a mapping of {', '.join(f.name for f in fields(cls))}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise LeanEyeError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(known)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if isinstance(default, (ScenesConfig, LossConfig)):
            value = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise LeanEyeError(f"{where}.{name}: expected a list of {len(default)} numbers")
            value = tuple(value)
        elif isinstance(default, (int, float)) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise LeanEyeError(f"{where}.{name}: expected a number, got {value!r}")
        values[name] = value
    return cls(**values)


def load_config(path: Path) -> TrainConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise LeanEyeError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise LeanEyeError(f"--config {path}: not valid YAML ({first_line(exc)})") from None
    config = _from_dict(TrainConfig, data, str(path))
    if config.preset not in PRESETS:
        raise LeanEyeError(f"{path}: preset {config.preset!r}: expected one of {', '.join(PRESETS)}")
    for name in ("iterations", "batch_size", "eval_every", "checkpoint_every"):
        if getattr(config, name) <= 0:
            raise LeanEyeError(f"{path}: {name} = {getattr(config, name)}: expected a positive number")
    if any(v <= 0 or v % 32 for v in config.input_size):
        raise LeanEyeError(f"{path}: input_size {list(config.input_size)}: expected positive multiples of 32")
    return config


def config_dict(config: TrainConfig) -> dict:
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return list(value)
        return value

    return plain(asdict(config))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        (decay if p.ndim == 4 else no_decay).append(p)  # no decay on BatchNorm and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(config: TrainConfig, iteration: int) -> float:
    if iteration < config.warmup:
        return config.lr * (iteration + 1) / config.warmup
    progress = (iteration - config.warmup) / max(1, config.iterations - config.warmup)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch(scene_set, indices: np.ndarray, rng: np.random.Generator):
    """Images as a float tensor (B, 3, H, W) in [0, 1], BGR, with targets; random horizontal flips and exposure."""
    images = scene_set.images[indices].astype(np.float32)
    width = images.shape[2]
    targets = []
    flips = rng.random(len(indices)) < 0.5
    gains = rng.uniform(0.75, 1.25, len(indices)).astype(np.float32)
    for k, i in enumerate(indices):
        boxes, ignore = scene_set.boxes[i].copy(), scene_set.ignore[i].copy()
        if flips[k]:
            images[k] = images[k, :, ::-1]
            for b in (boxes, ignore):
                b[:, [0, 2]] = width - b[:, [2, 0]]
        images[k] *= gains[k]
        targets.append(
            {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(scene_set.labels[i]),
                "ignore": torch.from_numpy(ignore),
            }
        )
    np.clip(images, 0, 255, out=images)
    return torch.from_numpy(images).permute(0, 3, 1, 2).div_(255), targets


def _ema_update(ema: LeanDet, model: LeanDet, decay: float) -> None:
    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(m, alpha=1 - decay)
            else:
                e.copy_(m)


def train(
    config: TrainConfig,
    out: Path,
    work_dir: Path,
    resume: bool = False,
    force: bool = False,
    cache_dir: Path | None = Path("runs/cache"),
    config_name: str = "",
) -> dict:
    """Run the training stage; returns the metrics written to `out/metrics.json`."""
    from tqdm import tqdm

    from ..evaluate import evaluate_model

    check_output_path(out, force, "--out")
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    class_names = list(SCENE_CLASSES)
    model = LeanDet(preset_config(config.preset, len(class_names), *config.input_size))
    ema = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    state_path = work_dir / "last.pt"
    start, history, elapsed = 0, [], 0.0
    if resume and state_path.exists():
        state = read_checkpoint(state_path)
        if state.get("train_config") != config_dict(config):
            raise LeanEyeError(
                f"{state_path}: was written with a different config; resume needs the same config (or drop --resume)"
            )
        model = build_model(state_path, state)
        ema = build_model(state_path, state, "ema")
        optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        optimizer.load_state_dict(state["optimizer"])
        start, history, elapsed = int(state["iteration"]), list(state["history"]), float(state["elapsed_s"])
        print(f"resuming from {state_path} at iteration {start}", file=sys.stderr)
    elif resume:
        print(f"--resume: no state at {state_path}; starting from scratch", file=sys.stderr)

    train_set = render_scene_set(config.scene_set(config.train), cache_dir, desc="render train scenes")
    heldout = render_scene_set(config.scene_set(config.heldout), cache_dir, desc="render held-out scenes")

    def save_state(iteration: int) -> None:
        save_checkpoint(
            state_path,
            {
                "model_config": model.config.to_dict(),
                "class_names": class_names,
                "state_dict": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "history": history,
                "elapsed_s": elapsed,
                "train_config": config_dict(config),
            },
        )

    # channels_last: about 25 % faster convolutions on CPU (oneDNN), same numbers
    model.to(memory_format=torch.channels_last).train()
    ema.to(memory_format=torch.channels_last).eval()
    began = time.perf_counter() - elapsed
    bar = tqdm(total=config.iterations, initial=start, desc=f"train {config.preset}", unit="it", file=sys.stderr)
    running, window = None, []
    for iteration in range(start, config.iterations):
        rng = np.random.default_rng([config.seed, iteration])  # per-iteration stream: resuming replays exactly
        indices = rng.integers(0, len(train_set.images), config.batch_size)
        images, targets = _batch(train_set, indices, rng)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, iteration)
        cls, boxes = model(images.contiguous(memory_format=torch.channels_last))
        points, strides = model.anchors(images.shape[2], images.shape[3], images.device)
        loss, parts = detection_loss(cls, boxes, points, strides, targets, config.loss)
        if not torch.isfinite(loss):
            raise LeanEyeError(
                f"training diverged at iteration {iteration} (loss {float(loss)}); lower lr in the config"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        _ema_update(ema, model, config.ema_decay * (1 - math.exp(-(iteration + 1) / 200)))
        loss_value = loss.item()
        running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
        window.append(loss_value)
        bar.set_postfix(loss=f"{running:.3f}", cls=f"{parts['cls']:.3f}", box=f"{parts['box']:.3f}")
        bar.update(1)
        done = iteration + 1
        if done % 10 == 0:
            history.append({"iteration": done, "loss": sum(window) / len(window)})  # mean of the last 10
            window = []
        if done % config.eval_every == 0 and done < config.iterations:
            quick = evaluate_model(ema, heldout, class_names, bootstrap=0)
            history.append({"iteration": done, "heldout_map50": quick.map50, "heldout_map50_95": quick.map50_95})
            bar.write(f"iteration {done}: held-out mAP50 {quick.map50:.3f}, mAP50-95 {quick.map50_95:.3f}")
        if done % config.checkpoint_every == 0 or done == config.iterations:
            elapsed = time.perf_counter() - began
            save_state(done)
    bar.close()
    train_seconds = time.perf_counter() - began

    result = evaluate_model(ema, heldout, class_names, bootstrap=config.bootstrap)
    metrics = {
        "protocol": f"generated scenes by {EVAL_PROTOCOL.describe()}",
        "heldout": {
            "first_seed": config.heldout.first_seed,
            "sequences": config.heldout.sequences,
            "frames_per_sequence": config.heldout.frames_per_sequence,
            "frame_step": config.heldout.frame_step,
            "frames": len(heldout.images),
        },
        **result.to_dict(),
        "model": {
            "preset": config.preset,
            "parameters": count_parameters(ema),
            "gflops": gflops(ema),
            "input_size": list(config.input_size),
        },
    }
    record = {
        "stage": "train",
        "config": config_name,
        "iterations": config.iterations,
        "train_frames": len(train_set.images),
        "train_seeds": [config.train.first_seed, config.train.first_seed + config.train.sequences - 1],
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "history": history,
        "metrics": "metrics.json",
    }
    with atomic_path(out, force=force, is_dir=True) as tmp:
        save_checkpoint(
            tmp / "model.pt",
            {
                "model_config": ema.config.to_dict(),
                "class_names": class_names,
                "state_dict": ema.state_dict(),
                "meta": {"train_seconds": record["train_seconds"]},
            },
        )
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    return metrics


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a LeanDet on procedural driving scenes")
    p.add_argument("--config", type=Path, required=True, help="YAML training config (see compression/configs/)")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: model.pt, config.yaml, metrics.json, train.json"
    )
    p.add_argument("--work-dir", type=Path, help="resumable state (default runs/train/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the work folder's last state")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--iterations", type=int, help="override the config's iteration count (quick checks)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.iterations is not None:
        if args.iterations <= 0:
            raise LeanEyeError(f"--iterations {args.iterations}: expected a positive number")
        config = TrainConfig(
            **{**{f.name: getattr(config, f.name) for f in fields(config)}, "iterations": args.iterations}
        )
    work_dir = args.work_dir or Path("runs/train") / args.config.stem
    metrics = train(config, args.out, work_dir, resume=args.resume, force=args.force, config_name=str(args.config))
    print(f"held-out mAP50 {metrics['mAP50']:.3f}, mAP50-95 {metrics['mAP50-95']:.3f}; wrote {args.out}")
    return 0
