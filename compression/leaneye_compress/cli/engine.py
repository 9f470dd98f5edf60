"""`leaneye-compress engine`: build a TensorRT plan on this machine into an engine directory, or (with
--on-target) write an engine directory that carries the ONNX for the target to build the plan on
its first load."""

from __future__ import annotations

import argparse
from pathlib import Path

from leaneye.cli.options import add_force_option

from ..artifacts import outcome

# BuildOptions' fields as this command's flags, for its errors.
OPTION_FLAGS = {
    "precision": "--precision",
    "workspace_mb": "--workspace",
    "dla_core": "--dla-core",
    "batch": "--batch",
    "version_compatible": "--version-compatible",
}


def _batch(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX, three integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from leaneye.backends.tensorrt.options import BuildOptions
    from leaneye.errors import LeanEyeError, ParameterError

    from ..stages.engine_build import build_engine, carry_onnx

    try:
        options = BuildOptions(args.precision, args.workspace, args.dla_core, args.batch, args.version_compatible)
    except ParameterError as exc:
        raise exc.for_options(OPTION_FLAGS) from None
    if args.on_target:
        if args.timing_cache is not None:
            raise LeanEyeError(
                "--timing-cache: not used with --on-target (the first load keeps a timing cache beside its plan)"
            )
        _, skipped = carry_onnx(options, args.out, args.onnx, args.engine, force=args.force)
        done = outcome(skipped, "ONNX and options")
        print(f"{done} {args.out}: the ONNX and {args.precision} build options; its first load builds the plan")
        return 0
    record, skipped = build_engine(options, args.out, args.onnx, args.engine, args.timing_cache, force=args.force)
    details = record["details"]
    done = outcome(skipped, "ONNX, options and machine")
    print(
        f"{done} {args.out}: {record['metrics']['plan_bytes']} byte plan, TensorRT {details['release_line']}, "
        f"flags {details['builder_flags'] or 'none'}{', strongly typed' if details['strongly_typed'] else ''}"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "engine",
        help="build a TensorRT plan on this machine (Jetson or NVIDIA GPU) into an engine directory",
        description=__doc__,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", type=Path, help="the ONNX to build")
    source.add_argument(
        "--engine", type=Path, help="engine directory to build from (its tensorrt/model.onnx when it has one)"
    )
    p.add_argument("--precision", required=True, choices=["fp32", "fp16", "int8", "fp8"], help="arithmetic")
    p.add_argument("--out", required=True, type=Path, help="engine directory to write")
    p.add_argument(
        "--timing-cache", type=Path, help="TensorRT timing cache file, read and updated (speeds up rebuilds)"
    )
    p.add_argument(
        "--workspace", type=int, default=0, metavar="MB", help="builder workspace limit (default: TensorRT's)"
    )
    p.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N, GPU fallback (Jetson AGX Orin)")
    p.add_argument("--batch", type=_batch, metavar="MIN:OPT:MAX", help="optimization profile of a dynamic batch")
    p.add_argument("--version-compatible", action="store_true", help="a plan later TensorRT releases also run")
    p.add_argument(
        "--on-target",
        action="store_true",
        help="build nothing here (no TensorRT or GPU needed): write the ONNX and these options; the engine's "
        "first load on the target builds the plan and caches it",
    )
    add_force_option(p, "engine directory")
    p.set_defaults(func=run)
