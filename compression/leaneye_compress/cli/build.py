"""`leaneye-compress build`: the whole compression chain from one YAML config."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..stages import BUILD_STAGES


def run(args: argparse.Namespace) -> int:
    from ..build import build, load_build_config, publish_student

    config = load_build_config(args.config)
    records = build(config, args.config, args.out, rerun_from=args.rerun_from)
    if args.publish is not None:
        publish_student(args.out, args.publish)
        print(f"published the student, its record and the report to {args.publish}")
    print(args.out / "report" / "report.md")
    for name, target in records["report"].get("metrics", {}).get("targets", {}).items():
        print(f"{name}: {target}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build", help="prune, distill, calibrate INT8 and report, driven by one YAML config (skips what is up to date)"
    )
    p.add_argument("--config", type=Path, required=True, help="build config (see compression/configs/default.yaml)")
    p.add_argument("--out", type=Path, required=True, help="build folder: one sub-folder per stage")
    p.add_argument(
        "--from",
        dest="rerun_from",
        metavar="STAGE",
        help=f"rerun this stage ({', '.join(BUILD_STAGES)}) and every later one, even if up to date",
    )
    p.add_argument(
        "--publish",
        type=Path,
        metavar="DIR",
        help="afterwards, copy the student checkpoint, its record and the report into DIR (replaced atomically)",
    )
    p.set_defaults(func=run)
