"""`leaneye-compress distill`: a teacher LeanDet teaches a student on frames without labels.

Under `torchrun --nproc_per_node N -m leaneye_compress.cli distill ...` the global batch is shared
by N processes (DistributedDataParallel); rank 0 writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option, int_in

from ..artifacts import outcome


def _config(args: argparse.Namespace):
    from ..config import from_mapping, load_config, to_mapping
    from ..stages.distill import DistillConfig

    config = load_config(DistillConfig, args.config) if args.config else DistillConfig()
    mapping = to_mapping(config)
    if args.data:  # the user's frames replace the config's, generated scenes included
        mapping["frames"] = {**mapping["frames"], "paths": [str(p) for p in args.data], "scenes": {"sequences": 0}}
    if args.topic is not None:
        mapping["frames"]["topic"] = args.topic
    if args.iterations is not None:
        mapping["iterations"] = args.iterations
    return from_mapping(DistillConfig, mapping, "command line")


def run(args: argparse.Namespace) -> int:
    from ..stages.distill import distill

    record, skipped = distill(
        _config(args),
        args.teacher,
        args.student,
        args.out,
        force=args.force,
        work_dir=args.work_dir,
        cache_dir=args.cache_dir,
    )
    if not record:  # a torchrun process other than rank 0: rank 0 reports
        return 0
    metrics = record["metrics"]
    agreement = metrics["agreement_with_teacher"]
    before, after = metrics["before"]["heldout_distance_to_teacher"]["total"], metrics["heldout_distance_to_teacher"]
    done = outcome(skipped, "inputs and config")
    f1 = agreement["mean_F1"]
    print(
        f"held-out mAP50 {metrics['mAP50']:.3f}, mAP50-95 {metrics['mAP50-95']:.3f}; agreement with the teacher: "
        f"F1 {'n/a' if f1 is None else format(f1, '.3f')}; distance to the teacher {before:.4f} -> "
        f"{after['total']:.4f}; {done} {args.out}"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distill a teacher LeanDet into a student (pruned model or preset)")
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (model.pt)")
    p.add_argument(
        "--student", required=True, help="student checkpoint (e.g. prune's model.pt) or a preset: student, teacher"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder: model.pt and record.json")
    p.add_argument("--config", type=Path, help="YAML distillation config (keys: docs/compression/distill.md)")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="frames to distill on instead of the config's: image files or folders, videos, rosbag2 bags",
    )
    p.add_argument("--topic", help="the bags' image topic (default: each bag's only image topic)")
    p.add_argument("--iterations", type=int_in("--iterations", "a positive integer", 1), help="override the config's")
    p.add_argument("--work-dir", type=Path, help="resumable state and scene cache (default: OUT.work beside --out)")
    p.add_argument("--cache-dir", type=Path, help="rendered scene sets (default: WORK_DIR/cache)")
    add_force_option(p, "output folder, even one up to date")
    p.set_defaults(func=run)
