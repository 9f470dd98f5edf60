"""Checkpoints: written atomically, read with `weights_only=True` and checked before use.

A model checkpoint (`model.pt`, format version 2) is a dict:
    {"format": "leaneye-leandet", "version": 2, "model_config": {...LeanDetConfig...},
     "layer_channels": {conv name: [in, out], ...}, "class_names": [...], "state_dict": {...}, "meta": {...}}
`layer_channels` records every convolution's width, so a model whose widths no longer follow its
width multiplier (a pruned one) loads. Version 1 (the same without `layer_channels`: widths from
the multiplier) still loads. A training state (`last.pt`, for resuming) adds "optimizer", "ema",
"iteration" and the training config.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from leaneye.atomic import atomic_write_bytes
from leaneye.errors import LeanEyeError, first_line

from .models.contract import MAX_INPUT_SIDE
from .models.detector import STRIDES, LeanDet, LeanDetConfig, layer_channels

FORMAT = "leaneye-leandet"
VERSION = 2
READABLE_VERSIONS = (1, 2)


def model_payload(model: LeanDet, class_names, state_dict: dict | None = None) -> dict:
    """What a checkpoint needs to rebuild `model` (with `state_dict`, default its own: e.g. EMA weights)."""
    return {
        "model_config": model.config.to_dict(),
        "layer_channels": {name: list(widths) for name, widths in layer_channels(model).items()},
        "class_names": list(class_names),
        "state_dict": model.state_dict() if state_dict is None else state_dict,
    }


def checkpoint_bytes(payload: dict) -> bytes:
    """`payload` (`model_payload(...)` plus any extra keys) as the bytes of a version-2 checkpoint."""
    missing = {"model_config", "layer_channels", "class_names", "state_dict"} - set(payload)
    if missing:
        raise ValueError(f"checkpoint payload lacks {sorted(missing)}; build it with model_payload()")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write `payload` as a version-2 checkpoint, atomically."""
    atomic_write_bytes(path, checkpoint_bytes(payload))


def read_checkpoint(path: Path) -> dict:
    """Load and check the envelope; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise LeanEyeError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or hostile files
        raise LeanEyeError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}); expected a file written by leaneye-compress"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LeanEyeError(f"{path}: expected a LeanDet checkpoint (format {FORMAT!r})")
    if data.get("version") not in READABLE_VERSIONS:
        raise LeanEyeError(
            f"{path}: checkpoint version {data.get('version')!r}; this tool reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key in ("model_config", "class_names", "state_dict") + (("layer_channels",) if data["version"] >= 2 else ()):
        if key not in data:
            raise LeanEyeError(f"{path}: checkpoint has no {key!r}")
    return data


def _check_input_size(path: Path, config: LeanDetConfig) -> None:
    # Checked before building anything: a huge size would otherwise end in a MemoryError traceback.
    for name in ("input_height", "input_width"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INPUT_SIDE:
            raise LeanEyeError(f"{path}: model_config {name} {value!r}: expected an integer in 1..{MAX_INPUT_SIDE}")
        if value % STRIDES[-1]:
            raise LeanEyeError(f"{path}: model_config {name} {value}: expected a multiple of {STRIDES[-1]}")


def build_model(path: Path, data: dict, state_key: str = "state_dict") -> LeanDet:
    try:
        config = LeanDetConfig(**data["model_config"])
    except TypeError as exc:
        raise LeanEyeError(f"{path}: checkpoint does not match the LeanDet architecture ({first_line(exc)})") from None
    _check_input_size(path, config)
    try:
        channels = {name: tuple(widths) for name, widths in (data.get("layer_channels") or {}).items()}
        model = LeanDet(config, channels)
        model.load_state_dict(data[state_key])
        # A small forward pass: recorded widths that do not chain (one layer's output is not the
        # next one's input) fail here, naming the file, not later inside an export or evaluation.
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, STRIDES[-1], STRIDES[-1]))
    except (TypeError, RuntimeError, ValueError) as exc:
        raise LeanEyeError(f"{path}: checkpoint does not match the LeanDet architecture ({first_line(exc)})") from None
    if len(data["class_names"]) != config.num_classes:
        raise LeanEyeError(f"{path}: {len(data['class_names'])} class names for a {config.num_classes}-class model")
    return model


def load_model(path: Path) -> tuple[LeanDet, dict]:
    data = read_checkpoint(path)
    return build_model(path, data), data
