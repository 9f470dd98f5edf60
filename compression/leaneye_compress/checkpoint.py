"""Checkpoints: written atomically, read with `weights_only=True` and checked before use.

A model checkpoint (`model.pt`) is a dict:
    {"format": "leaneye-leandet", "version": 1, "model_config": {...LeanDetConfig...},
     "class_names": [...], "state_dict": {...}, "meta": {...}}
A training state (`last.pt`, for resuming) adds "optimizer", "ema" and "iteration".
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from leaneye.atomic import atomic_write_bytes
from leaneye.errors import LeanEyeError, first_line

from .models.detector import LeanDet, LeanDetConfig

FORMAT = "leaneye-leandet"
VERSION = 1


def save_checkpoint(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
    if data.get("version") != VERSION:
        raise LeanEyeError(f"{path}: checkpoint version {data.get('version')!r}; this tool reads version {VERSION}")
    for key in ("model_config", "class_names", "state_dict"):
        if key not in data:
            raise LeanEyeError(f"{path}: checkpoint has no {key!r}")
    return data


def build_model(path: Path, data: dict, state_key: str = "state_dict") -> LeanDet:
    try:
        config = LeanDetConfig(**data["model_config"])
        model = LeanDet(config)
        model.load_state_dict(data[state_key])
    except (TypeError, RuntimeError, ValueError) as exc:
        raise LeanEyeError(f"{path}: checkpoint does not match the LeanDet architecture ({first_line(exc)})") from None
    if len(data["class_names"]) != config.num_classes:
        raise LeanEyeError(f"{path}: {len(data['class_names'])} class names for a {config.num_classes}-class model")
    return model.eval()


def load_model(path: Path) -> tuple[LeanDet, dict]:
    data = read_checkpoint(path)
    return build_model(path, data), data
