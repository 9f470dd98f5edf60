"""`leaneye-compress prune`: structural channel pruning to a FLOPs ratio, a measured latency or per-layer ratios."""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option

from ..artifacts import outcome


def _overrides(args: argparse.Namespace) -> dict:
    """The config keys that command-line options set."""
    values: dict = {}
    if args.flops_ratio is not None:
        values.update(target="flops", flops_ratio=args.flops_ratio)
    if args.latency_ms is not None:
        values.update(target="latency", latency_ms=args.latency_ms, latency_ratio=0.0)
    if args.importance is not None:
        values["importance"] = args.importance
    if args.model_factory is not None:
        values["model_factory"] = args.model_factory
    if args.input_shape is not None:
        values["input_shape"] = args.input_shape
    return values


def run(args: argparse.Namespace) -> int:
    from leaneye.errors import LeanEyeError

    from ..config import from_mapping, load_config, to_mapping
    from ..stages.prune import PruneConfig, prune

    if (args.model is None) == (args.weights is None):
        raise LeanEyeError("prune: give a checkpoint (MODEL) or, with --model-factory, its --weights; not both")
    if args.weights is not None and args.model_factory is None:
        raise LeanEyeError("--weights needs --model-factory package.module:function")
    config = load_config(PruneConfig, args.config) if args.config else PruneConfig()
    overrides = _overrides(args)
    if overrides:
        config = from_mapping(PruneConfig, {**to_mapping(config), **overrides}, "command line")
    record, skipped = prune(config, args.model or args.weights, args.out, force=args.force, work_dir=args.work_dir)
    metrics = record["metrics"]
    before, after = metrics["original"], metrics["pruned"]
    line = (
        f"parameters {before['parameters']:,} -> {after['parameters']:,}, "
        f"GFLOPs {before['gflops']:.3f} -> {after['gflops']:.3f} ({metrics['gflops_ratio']:.2f}x)"
    )
    if "latency_ms" in after:
        line += f", ONNX Runtime CPU {before['latency_ms']:.1f} -> {after['latency_ms']:.1f} ms"
    done = outcome(skipped, "model and config")
    print(f"{line}; {done} {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="remove channels: to a FLOPs ratio, a measured latency or per-layer ratios")
    p.add_argument("model", type=Path, nargs="?", help="LeanDet checkpoint (model.pt) to prune")
    p.add_argument("--out", type=Path, required=True, help="output folder: model.pt and record.json")
    p.add_argument("--config", type=Path, help="YAML prune config (keys: leaneye_compress.stages.prune.PruneConfig)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--flops-ratio", type=float, help="prune to this fraction of the original GFLOPs")
    target.add_argument(
        "--latency-ms", type=float, help="prune until ONNX Runtime CPU FP32 latency is at most this (ms)"
    )
    p.add_argument("--importance", choices=("magnitude", "bn_scale", "taylor"), help="which channels go first")
    p.add_argument("--model-factory", help="any torch.nn.Module: package.module:function building it")
    p.add_argument("--weights", type=Path, help="the --model-factory model's state dict (torch.save)")
    p.add_argument("--input-shape", type=int, nargs="+", help="the --model-factory model's input, e.g. 1 3 224 224")
    p.add_argument("--work-dir", type=Path, help="cache of generated scenes (default: OUT.work beside --out)")
    add_force_option(p, "output folder, even one up to date")
    p.set_defaults(func=run)
