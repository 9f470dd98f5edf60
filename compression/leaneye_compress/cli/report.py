"""`leaneye-compress report`: every stage's model measured side by side; report.md, report.json, report.png.

    leaneye-compress report \\
        --entry "teacher fp32 (PyTorch eager)" checkpoint=runs/build/teacher/model.pt role=teacher_eager \\
        --entry "teacher fp32" engine=runs/build/teacher_engine checkpoint=runs/build/teacher/model.pt role=teacher \\
        --entry "student fp32" engine=runs/build/student_engine checkpoint=runs/build/distill/model.pt role=student \\
        --entry "student int8" engine=runs/build/calibrate checkpoint=runs/build/distill/model.pt role=student_int8 \\
        --out runs/build/report [--config report.yaml] [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option
from leaneye.errors import LeanEyeError

from ..artifacts import outcome

ENTRY_KEYS = ("engine", "checkpoint", "role")


def parse_entry(tokens: list[str]):
    """NAME [engine=DIR] [checkpoint=PT] [role=ROLE] as a ReportEntry."""
    from ..stages.report import ReportEntry

    name, *items = tokens
    values: dict = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or key not in ENTRY_KEYS:
            raise LeanEyeError(f"--entry {name}: {item!r} is not KEY=VALUE with KEY one of {', '.join(ENTRY_KEYS)}")
        if key in values:
            raise LeanEyeError(f"--entry {name}: {key} given twice")
        values[key] = value
    return ReportEntry(
        name=name,
        engine_dir=Path(values["engine"]) if values.get("engine") else None,
        checkpoint=Path(values["checkpoint"]) if values.get("checkpoint") else None,
        role=values.get("role", ""),
    )


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..stages.report import ReportConfig, report

    config = load_config(ReportConfig, args.config) if args.config else ReportConfig()
    entries = [parse_entry(tokens) for tokens in args.entry]
    record, skipped = report(
        config, entries, args.out, force=args.force, config_name=str(args.config) if args.config else ""
    )
    print((args.out / "report.md").read_text(encoding="utf-8"))
    done = outcome(skipped, "files and config")
    print(f"{done} {args.out} (report.md, report.json, report.png)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="measure every stage's model side by side: size, latency, held-out mAP, targets",
        description="Measure engines (through leaneye's Detector) and LeanDet checkpoints (PyTorch eager) side by "
        "side in one run: parameters, GFLOPs, file sizes, p50/p99 latency end to end and of the inference call, "
        "held-out mAP with bootstrap intervals and the paired difference to the teacher, and the compression targets "
        "(P3, P4, P5).",
    )
    p.add_argument(
        "--entry",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "KEY=VALUE"),
        help="one measured model: its NAME, then engine=DIR (run by Detector), checkpoint=PT (parameters and "
        "GFLOPs; alone: run in PyTorch eager) and role=ROLE (teacher_eager, teacher, student, student_int8: "
        "what the targets compare); repeat for every entry",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder: report.md, report.json, report.png")
    p.add_argument("--config", type=Path, help="YAML ReportConfig: heldout, frame_size, latency_frames, rounds, ...")
    add_force_option(p, "output folder, even one up to date")
    p.set_defaults(func=run)
