"""Training stage: procedural scenes → a LeanDet checkpoint and the record of the run.

    leaneye-compress train --config compression/configs/teacher.yaml --out DIR [--resume] [--force]

DIR receives `model.pt` (EMA weights) and `record.json` (artifacts.py: the resolved config, the
held-out evaluation by shared/EVAL.md as metrics, the loss history); it appears only when the run
has finished, and a rerun with the same config is skipped. Until then, resumable state lives in
the work folder (`--work-dir`, default DIR.work beside DIR), written atomically every
`checkpoint_every` iterations, so Ctrl-C loses at most that much and `--resume` carries on
bit-for-bit from the last state. Rendered scene sets are cached in the work folder's cache/
(or `--cache-dir`).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leaneye.errors import LeanEyeError
from leaneye.eval.protocol import EVAL_PROTOCOL
from leaneye.scenes.classes import SCENE_CLASSES

from ..artifacts import run_stage
from ..checkpoint import build_model, model_payload, read_checkpoint, save_checkpoint
from ..config import bounded, positive, to_mapping
from ..data import SceneSetConfig, render_scene_set
from ..models import contract
from ..models.detector import PRESETS, LeanDet, count_parameters, gflops, preset_config
from ..models.loss import LossConfig, detection_loss

STAGE = "train"


@dataclass(frozen=True)
class ScenesConfig:
    first_seed: int = bounded(1000, low=0)
    sequences: int = positive(250)
    frames_per_sequence: int = positive(8)
    frame_step: int = positive(4)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = bounded("teacher", choices=tuple(PRESETS))
    input_size: tuple[int, int] = bounded(contract.INPUT_SIZE, low=32, high=contract.MAX_INPUT_SIDE, multiple_of=32)
    # width, height of the generated frames
    frame_size: tuple[int, int] = bounded((1224, 370), low=16, high=contract.MAX_INPUT_SIDE)
    train: ScenesConfig = ScenesConfig()
    # Held out: seeds never used for training or calibration (EVAL.md, Splits).
    heldout: ScenesConfig = ScenesConfig(first_seed=9_000_000, sequences=60, frames_per_sequence=5, frame_step=10)
    iterations: int = positive(2500)
    batch_size: int = positive(16)
    lr: float = positive(2e-3)
    weight_decay: float = bounded(0.05, low=0)
    warmup: int = bounded(100, low=0)
    ema_decay: float = bounded(0.999, low=0, high=1)
    eval_every: int = positive(500)
    checkpoint_every: int = positive(50)
    seed: int = bounded(0, low=0)
    bootstrap: int = bounded(EVAL_PROTOCOL.bootstrap, low=0)
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


def default_work_dir(out: Path) -> Path:
    """Where a run writing `out` keeps its resumable state and cache unless told otherwise: beside `out`."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        (decay if p.ndim == 4 else no_decay).append(p)  # no decay on BatchNorm and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate_at(config: TrainConfig, iteration: int) -> float:
    if iteration < config.warmup:
        return config.lr * (iteration + 1) / config.warmup
    progress = (iteration - config.warmup) / max(1, config.iterations - config.warmup)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def training_batch(scene_set, indices: np.ndarray, rng: np.random.Generator):
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
    return torch.from_numpy(images).permute(0, 3, 1, 2).mul_(contract.SCALE), targets


def ema_update(ema: LeanDet, model: LeanDet, decay: float) -> None:
    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(m, alpha=1 - decay)
            else:
                e.copy_(m)


def train(
    config: TrainConfig,
    out: Path,
    work_dir: Path | None = None,
    resume: bool = False,
    force: bool = False,
    cache_dir: Path | None = None,
    config_name: str = "",
) -> tuple[dict, bool]:
    """Run the training stage into `out` (skipped when `out` holds a run of the same config).

    `work_dir` (default `default_work_dir(out)`) keeps the resumable state; `cache_dir` (default
    `work_dir`/cache) the rendered scene sets. Returns (record, skipped).
    """
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else work_dir / "cache"
    return run_stage(
        STAGE,
        out,
        {},
        to_mapping(config),
        lambda folder: _train_into(folder, config, work_dir / "last.pt", resume, cache_dir, config_name),
        force=force,
        versions=("leaneye", "leaneye-compress", "torch", "numpy"),
    )


def _train_into(
    folder: Path, config: TrainConfig, state_path: Path, resume: bool, cache_dir: Path, config_name: str
) -> dict:
    from tqdm import tqdm

    from ..evaluate import evaluate_model

    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    class_names = list(SCENE_CLASSES)
    model = LeanDet(preset_config(config.preset, len(class_names), *config.input_size))
    ema = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    start, history, window, elapsed = 0, [], [], 0.0
    if resume and state_path.exists():
        state = read_checkpoint(state_path)
        if state.get("train_config") != to_mapping(config):
            raise LeanEyeError(
                f"{state_path}: was written with a different config; resume needs the same config (or drop --resume)"
            )
        model = build_model(state_path, state)
        ema = build_model(state_path, state, "ema")
        optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
        optimizer.load_state_dict(state["optimizer"])
        start, history, elapsed = int(state["iteration"]), list(state["history"]), float(state["elapsed_s"])
        window = list(state.get("loss_window", []))  # absent from states written before it was kept
        print(f"resuming from {state_path} at iteration {start}", file=sys.stderr)
    elif resume:
        print(f"--resume: no state at {state_path}; starting from scratch", file=sys.stderr)

    train_set = render_scene_set(config.scene_set(config.train), cache_dir, desc="render train scenes")
    heldout = render_scene_set(config.scene_set(config.heldout), cache_dir, desc="render held-out scenes")

    def save_state(iteration: int) -> None:
        save_checkpoint(
            state_path,
            {
                **model_payload(model, class_names),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
                "history": history,
                "loss_window": window,
                "elapsed_s": elapsed,
                "train_config": to_mapping(config),
            },
        )

    # channels_last: about 25 % faster convolutions on CPU (oneDNN), same numbers
    model.to(memory_format=torch.channels_last).train()
    ema.to(memory_format=torch.channels_last).eval()
    began = time.perf_counter() - elapsed
    # closed on the way out of an interrupt too, so the bar ends before the error line
    with tqdm(total=config.iterations, initial=start, desc=f"train {config.preset}", unit="it", file=sys.stderr) as bar:
        running = None
        for iteration in range(start, config.iterations):
            rng = np.random.default_rng([config.seed, iteration])  # per-iteration stream: resuming replays exactly
            indices = rng.integers(0, len(train_set.images), config.batch_size)
            images, targets = training_batch(train_set, indices, rng)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config, iteration)
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
            ema_update(ema, model, config.ema_decay * (1 - math.exp(-(iteration + 1) / 200)))
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
    train_seconds = time.perf_counter() - began

    result = evaluate_model(ema, heldout, class_names, bootstrap=config.bootstrap)
    save_checkpoint(folder / "model.pt", model_payload(ema, class_names))
    return {
        "metrics": {
            "protocol": f"generated scenes by {EVAL_PROTOCOL.describe()}",
            "heldout_frames": len(heldout.images),
            **result.to_dict(),
            "model": {
                "preset": config.preset,
                "parameters": count_parameters(ema),
                "gflops": gflops(ema),
                "input_size": list(config.input_size),
            },
        },
        "details": {
            "config_file": config_name,
            "train_frames": len(train_set.images),
            "train_seeds": [config.train.first_seed, config.train.first_seed + config.train.sequences - 1],
            "train_seconds": round(train_seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "history": history,
        },
    }
