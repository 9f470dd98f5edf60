"""`leaneye bench overhead`: what the runtime costs around the backend's own inference call.

    leaneye bench overhead --engine engines/yolox_nano ../shared/fixtures/kitti_tiny/image_2
    leaneye bench overhead --engine engines/yolox_nano drive_bag --topic /camera/image_raw --runs 400

Measurement notes: docs/runtime-overhead.md.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..bench import MIN_BENCH_RUNS, FrameCycle, measure_overhead
from ..errors import LeanEyeError
from .options import add_detection_options, add_engine_option, add_image_topic_option


def run_bench_overhead(args) -> int:
    from ..detector import Detector

    if args.frames < 1:
        raise LeanEyeError(f"--frames: expected a positive number, got {args.frames}")
    if args.runs < MIN_BENCH_RUNS:
        raise LeanEyeError(f"--runs: expected at least {MIN_BENCH_RUNS} for a stable median, got {args.runs}")
    with contextlib.ExitStack() as stack:
        frames = FrameCycle(args.sources, args.topic, args.frames, stack)
        detector = stack.enter_context(
            Detector.from_engine(args.engine, conf=args.conf, iou=args.iou, threads=args.threads)
        )
        result = measure_overhead(detector, frames, args.runs)
        input_h, input_w = detector.manifest.input.size
    distinct = f"{frames.distinct} frames" if frames.distinct else f"the first {args.runs + 1} frames"
    sizes = ", ".join(f"{width}x{height}" for width, height in result["sizes"][:5])
    print(f"{args.engine} ({input_w}x{input_h} input) on {distinct} of {'; '.join(frames.described)}")
    print(
        f"  frame size {sizes}{', ...' if len(result['sizes']) > 5 else ''}; median of {result['runs']} runs, "
        f"frames in turn"
    )
    if frames.bad_frames:
        print(f"  skipped {len(frames.bad_frames)} bag messages that do not decode")
    print(f"  preprocess                     {result['preprocess_ms']:8.3f} ms")
    print(f"  postprocess                    {result['postprocess_ms']:8.3f} ms")
    print(f"  glue                           {result['glue_ms']:8.3f} ms")
    print(f"  outside the inference call     {result['outside_ms']:8.3f} ms  (p90 {result['outside_p90_ms']:.3f})")
    inference = f"inference ({detector.backend.name})"
    print(f"  {inference:<31}{result['inference_ms']:8.3f} ms")
    print(f"  ratio outside / inference      {result['ratio']:8.3f}")
    print(f"  image decoding (separate)      {result['decode_ms']:8.3f} ms")
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks of the runtime")
    kinds = bench.add_subparsers(dest="bench", required=True)
    overhead = kinds.add_parser(
        "overhead",
        help="time per frame spent outside the backend's inference call",
        description="Median per-frame time of preprocess + postprocess + glue around the "
        "inference call, the call itself, and image decoding (reported apart).",
    )
    add_engine_option(overhead)
    overhead.add_argument(
        "sources",
        nargs="+",
        type=Path,
        help="image files, directories of images and/or rosbag2 bags (folder, .mcap or .db3)",
    )
    add_image_topic_option(overhead)
    overhead.add_argument("--frames", type=int, default=50, help="use at most this many distinct frames")
    overhead.add_argument("--runs", type=int, default=MIN_BENCH_RUNS, help="frames timed in total (cycling)")
    add_detection_options(overhead)
    overhead.set_defaults(func=run_bench_overhead)
