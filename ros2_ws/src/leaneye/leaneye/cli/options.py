"""Command-line options shared by several `leaneye` and `leaneye-compress` subcommands, each defined once.

Number options are parsed by range-checking types: NaN, infinities and values out of range are
one-line errors (`leaneye: error: --conf: expected ...`, exit 2) before any work starts.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import LeanEyeError


def float_in(option: str, what: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False):
    """An argparse type for `option`: a finite float in [low, high] ((low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high) or (low_open and value == low):
            # LeanEyeError, not argparse's ArgumentTypeError: run_command prints it as one line.
            raise LeanEyeError(f"{option}: expected {what}, got {text!r}")
        return value

    return parse


def int_in(option: str, what: str, low: int, high: int | None = None):
    """An argparse type for `option`: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise LeanEyeError(f"{option}: expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise LeanEyeError(f"{option}: expected {what}, got {text!r}")
        return value

    return parse


def frame_rate(option: str):
    return float_in(option, "a positive frame rate in Hz", 0.0, low_open=True)


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", required=True, type=Path, help="engine directory (model + manifest.json)")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = the backend's default)")
    parser.add_argument(
        "--device", help="where the backend runs: cpu, cuda:0, ... (default: the engine's backend's first device)"
    )
    parser.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a backend-specific option, repeatable: cuda_graph=true (tensorrt, pytorch), fp16=false (pytorch); "
        "docs/backends.md",
    )


def backend_settings(args: argparse.Namespace) -> dict:
    """--threads, --device and --backend-option as Detector.from_engine's keyword arguments."""
    from ..backends import parse_extra_options

    extra = parse_extra_options(args.backend_option, "--backend-option")
    return {"threads": args.threads, "device": args.device, "extra": extra}


def add_detection_options(parser: argparse.ArgumentParser, conf_help: str = "score threshold") -> None:
    """--conf, --iou, --threads and --device, as detect, bench and replay take them."""
    parser.add_argument(
        "--conf",
        type=float_in("--conf", "a score threshold in [0, 1]", 0.0, 1.0),
        default=0.25,
        help=f"{conf_help} (default: %(default)s)",
    )
    parser.add_argument(
        "--iou",
        type=float_in("--iou", "an NMS IoU threshold in [0, 1]", 0.0, 1.0),
        default=0.45,
        help="NMS IoU threshold (default: %(default)s)",
    )
    add_backend_options(parser)


def add_max_detections_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-detections",
        type=int_in("--max-detections", "a positive number", 1),
        default=300,
        help="at most this many per image (default: %(default)s)",
    )


def add_force_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"replace an existing {what}")


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", type=Path, help=f"also write {what} as JSON here")


def add_bootstrap_option(parser: argparse.ArgumentParser) -> None:
    from ..eval.protocol import EVAL_PROTOCOL

    parser.add_argument(
        "--bootstrap",
        type=int_in("--bootstrap", "0 or more resamples", 0),
        default=EVAL_PROTOCOL.bootstrap,
        help="bootstrap resamples of the images for the mAP intervals (0 = none; default: %(default)s)",
    )


def add_seed_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"seed of {what} (default: %(default)s)")


def add_image_topic_option(parser: argparse.ArgumentParser) -> None:
    """The camera topic read from a bag (replay, bench)."""
    parser.add_argument(
        "--topic",
        default="/camera/image_raw",
        help="image topic of bags; an absent raw topic falls back to <topic>/compressed and back "
        "(default: %(default)s)",
    )


def add_storage_option(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    parser.add_argument(
        "--storage",
        choices=("mcap", "sqlite3"),
        help=f"storage of {what} (default: the one its suffix names, else mcap)",
    )


def add_frame_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frame-id", default="camera", help="header frame_id (default: %(default)s)")
