"""`leaneye-compress train`: a LeanDet trained on procedural driving scenes."""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option

from ..artifacts import outcome


def run(args: argparse.Namespace) -> int:
    from ..config import from_mapping, load_config, to_mapping
    from ..stages.train import TrainConfig, train

    config = load_config(TrainConfig, args.config)
    if args.iterations is not None:
        config = from_mapping(TrainConfig, {**to_mapping(config), "iterations": args.iterations}, "--iterations")
    record, skipped = train(
        config,
        args.out,
        work_dir=args.work_dir,
        resume=args.resume,
        force=args.force,
        cache_dir=args.cache_dir,
        config_name=str(args.config),
    )
    metrics = record["metrics"]
    done = outcome(skipped, "config")
    print(f"held-out mAP50 {metrics['mAP50']:.3f}, mAP50-95 {metrics['mAP50-95']:.3f}; {done} {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a LeanDet on procedural driving scenes")
    p.add_argument("--config", type=Path, required=True, help="YAML training config (see compression/configs/)")
    p.add_argument("--out", type=Path, required=True, help="output folder: model.pt and record.json")
    p.add_argument("--work-dir", type=Path, help="resumable state and scene cache (default: OUT.work beside --out)")
    p.add_argument(
        "--cache-dir", type=Path, help="rendered scene sets, shareable between runs (default: WORK_DIR/cache)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the work folder's last state")
    add_force_option(p, "output folder, even one up to date")
    p.add_argument("--iterations", type=int, help="override the config's iteration count (quick checks)")
    p.set_defaults(func=run)
