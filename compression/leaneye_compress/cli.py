"""The `leaneye-compress` command: every subcommand's options and the function that runs its stage.

Stage modules are imported only when their subcommand runs, so `--help` and `import` need no
PyTorch (the engine-building side runs on Jetsons without a PyTorch wheel). Errors are reported
as `leaneye` reports them (leaneye.cli.run_command): one line and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leaneye.atomic import check_output_path
from leaneye.cli import run_command
from leaneye.cli.options import add_force_option
from leaneye.vision.decoders import DECODERS

from .stages import import_onnx


def run_train(args: argparse.Namespace) -> int:
    from .config import from_mapping, load_config, to_mapping
    from .stages.train import TrainConfig, train

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
    done = "up to date (same config); kept" if skipped else "wrote"
    print(f"held-out mAP50 {metrics['mAP50']:.3f}, mAP50-95 {metrics['mAP50-95']:.3f}; {done} {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .stages.export import export_engine

    check_output_path(args.out, args.force, "--out")
    print(json.dumps(export_engine(args.checkpoint, args.out, args.force), indent=2))
    return 0


def run_import(args: argparse.Namespace) -> int:
    manifest = import_onnx.import_model(
        args.model,
        args.decoder,
        args.out,
        classes=args.classes,
        input_format=args.input_format,
        align=args.align,
        input_size=args.input_size,
        force=args.force,
    )
    shape = manifest["input"]["shape"]
    print(
        f"{args.out}: {manifest['decoder']['type']} engine, input {manifest['input']['name']} "
        f"{shape[3]}x{shape[2]} {manifest['input']['color']}, {len(manifest['class_names'])} classes"
    )
    return 0


def _add_train(subparsers) -> None:
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
    p.set_defaults(func=run_train)


def _add_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a LeanDet checkpoint to an ONNX Runtime engine directory")
    p.add_argument("checkpoint", type=Path, help="model.pt written by `leaneye-compress train`")
    p.add_argument("--out", type=Path, required=True, help="engine directory to write (model.onnx + manifest.json)")
    add_force_option(p, "engine directory")
    p.set_defaults(func=run_export)


def _add_import(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="wrap an external ONNX detector into an engine directory",
        description=import_onnx.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model")
    p.add_argument("--decoder", required=True, choices=sorted(DECODERS), help="the model's output layout")
    p.add_argument("--out", required=True, type=Path, help="engine directory to write")
    p.add_argument("--classes", type=Path, help="text file, one class name per line (optional for Ultralytics exports)")
    p.add_argument(
        "--input-format",
        choices=sorted(import_onnx.INPUT_FORMATS),
        help="channel order and value range the model expects (default: per decoder)",
    )
    p.add_argument("--align", choices=["center", "top-left"], help="letterbox alignment (default: per decoder)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="input size for models with dynamic height/width",
    )
    add_force_option(p, "engine directory")
    p.set_defaults(func=run_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leaneye-compress", description="LeanEye offline: train, compress and build detection engines"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_export, _add_import):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
