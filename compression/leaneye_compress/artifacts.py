"""Stage outputs: one folder per stage run, written atomically, with a `record.json` saying how it was made.

record.json holds the stage name, its input files (path and sha256), the resolved config, the tool
versions, the stage's metrics and details, and its wall time. `run_stage` skips a stage whose
output folder already has a record with the same stage, inputs and config; every stage (train,
and prune, distill, calibrate after it) goes through it. Imports no torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from leaneye.atomic import atomic_path
from leaneye.engine import file_sha256, tool_versions
from leaneye.errors import LeanEyeError

RECORD_NAME = "record.json"


def outcome(skipped: bool, unchanged: str) -> str:
    """How a stage's command reports its output folder: kept (`run_stage` skipped it, its inputs being
    the same `unchanged`, e.g. "inputs and config") or written."""
    return f"up to date (same {unchanged}); kept" if skipped else "wrote"


def describe_inputs(inputs: dict[str, Path]) -> dict[str, dict]:
    """{role: {"path", "sha256"}} of a stage's input files."""
    described = {}
    for role, path in inputs.items():
        if not Path(path).is_file():
            raise LeanEyeError(f"{role} {path}: file not found")
        described[role] = {"path": str(path), "sha256": file_sha256(Path(path))}
    return described


def read_record(out: Path) -> dict | None:
    """The record of the stage output folder `out`, or None where there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(out) / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _same_run(record: dict | None, stage: str, inputs: dict[str, dict], config: dict) -> bool:
    if record is None or record.get("stage") != stage or record.get("config") != config:
        return False
    # The same files by content: a moved input still counts as unchanged.
    recorded = {role: entry.get("sha256") for role, entry in (record.get("inputs") or {}).items()}
    return recorded == {role: entry["sha256"] for role, entry in inputs.items()}


def run_stage(
    stage: str,
    out: Path,
    inputs: dict[str, Path],
    config: dict,
    produce: Callable[[Path], dict],
    force: bool = False,
    versions: tuple[str, ...] = ("leaneye", "leaneye-compress"),
) -> tuple[dict, bool]:
    """Run a stage into the folder `out` unless its record there shows the same inputs and config.

    `produce(folder)` writes the stage's files into `folder` (a temporary that becomes `out` only
    when everything, record.json included, is written) and returns {"metrics": ..., "details": ...}.
    Returns (record, skipped). An existing `out` made otherwise needs `force`.
    """
    out = Path(out)
    described = describe_inputs(inputs)
    existing = read_record(out) if out.exists() else None
    if not force and _same_run(existing, stage, described, config):
        return existing, True
    if out.exists() and not force:
        why = "was made from other inputs or another config" if existing else "has no record.json"
        raise LeanEyeError(f"--out {out} already exists and {why}; pass --force to replace it")
    began = time.perf_counter()
    with atomic_path(out, force=force, is_dir=True) as folder:
        produced = produce(folder)
        record = {
            "stage": stage,
            "inputs": described,
            "config": config,
            "tool_versions": tool_versions(*versions),
            "metrics": produced.get("metrics", {}),
            "details": produced.get("details", {}),
            "wall_s": round(time.perf_counter() - began, 1),
            "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        (folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record, False
