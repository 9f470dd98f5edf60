"""`leaneye-compress qad`: quantization-aware distillation of a calibrated student, back to the same QDQ form."""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option, int_in

from ..artifacts import outcome


def run(args: argparse.Namespace) -> int:
    from ..config import from_mapping, load_config, to_mapping
    from ..stages.qad import QADConfig, qad

    config = load_config(QADConfig, args.config) if args.config else QADConfig()
    mapping = to_mapping(config)
    if args.data:  # the user's frames replace the config's, generated scenes included
        frames = mapping["distill"]["frames"]
        mapping["distill"]["frames"] = {**frames, "paths": [str(p) for p in args.data], "scenes": {"sequences": 0}}
    if args.iterations is not None:
        mapping["distill"]["iterations"] = args.iterations
    record, skipped = qad(
        from_mapping(QADConfig, mapping, "command line"),
        args.checkpoint,
        args.teacher,
        args.calibration,
        args.out,
        force=args.force,
        work_dir=args.work_dir,
    )
    done = outcome(skipped, "inputs and config")
    print(f"{record['metrics']['verdict']}; {done} {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("qad", help="fine-tune a calibrated student with fake quantization against its teacher")
    p.add_argument("--checkpoint", type=Path, required=True, help="the student checkpoint calibrate's engine came from")
    p.add_argument("--teacher", type=Path, required=True, help="the float teacher checkpoint")
    p.add_argument(
        "--calibration", type=Path, required=True, help="a calibrate output folder (ranges.json, record.json)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="engine directory to write (INT8 QDQ, tensorrt/, record.json)"
    )
    p.add_argument("--config", type=Path, help="YAML QAD config (keys: docs/compression/distill.md, QAD)")
    p.add_argument("--data", type=Path, nargs="+", help="frames instead of the config's: images, videos, rosbag2 bags")
    p.add_argument("--iterations", type=int_in("--iterations", "a positive integer", 1), help="override the config's")
    p.add_argument("--work-dir", type=Path, help="scene cache (default: OUT.work beside --out)")
    add_force_option(p, "output folder, even one up to date")
    p.set_defaults(func=run)
