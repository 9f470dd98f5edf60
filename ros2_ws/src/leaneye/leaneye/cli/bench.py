"""`leaneye bench`: what the runtime costs around the backend's own inference call (`overhead`), and
what the ROS 2 node and transport add to `Detector.detect` (`ros`).

    leaneye bench overhead --engine engines/yolox_nano ../shared/fixtures/kitti_tiny/image_2
    leaneye bench overhead --engine engines/yolox_nano drive_bag --topic /camera/image_raw --runs 400
    leaneye bench ros --engine engines/yolox_nano drive_bag --runs 200 --json bench_ros.json

Measurement notes: docs/runtime-overhead.md, docs/ros-bench.md.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text, check_output_path
from ..bench import MIN_BENCH_RUNS, FrameCycle, measure_overhead
from ..errors import LeanEyeError
from .options import (
    add_detection_options,
    add_engine_option,
    add_force_option,
    add_image_topic_option,
    add_json_option,
    backend_settings,
    frame_rate,
    int_in,
)

ROS_MODES = ("inprocess", "processes", "transport")
ROS_DETECTOR_MODES = ("inprocess", "processes")


def run_bench_overhead(args) -> int:
    from ..detector import Detector

    if args.frames < 1:
        raise LeanEyeError(f"--frames: expected a positive number, got {args.frames}")
    if args.runs < MIN_BENCH_RUNS:
        raise LeanEyeError(f"--runs: expected at least {MIN_BENCH_RUNS} for a stable median, got {args.runs}")
    with contextlib.ExitStack() as stack:
        frames = FrameCycle(args.sources, args.topic, args.frames, stack)
        detector = stack.enter_context(
            Detector.from_engine(args.engine, conf=args.conf, iou=args.iou, **backend_settings(args))
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


def run_bench_ros(args) -> int:
    modes = tuple(mode for mode in ROS_MODES if mode in (args.mode or ROS_MODES))
    if args.engine is None and set(modes) & set(ROS_DETECTOR_MODES):
        raise LeanEyeError(f"--engine: required with --mode {' or '.join(ROS_DETECTOR_MODES)} (the default runs both)")
    if args.json is not None:
        check_output_path(args.json, args.force, "--json")
    with contextlib.ExitStack() as stack:  # the sources' errors here, before any process starts
        next(FrameCycle(args.sources, args.topic, args.frames, stack))
    try:
        from ..ros import bench as ros_bench
    except ImportError as exc:
        raise LeanEyeError(f"bench ros needs ROS 2 (rclpy): {exc}; source the ROS 2 setup.bash first") from None

    if args.profile == "none":
        profile = None
    elif args.profile is None:
        profile = ros_bench.shipped_profile()
        if profile is None:
            print(
                f"bench ros: no {ros_bench.PROFILE_FILE} installed or beside the sources: measuring without a profile",
                file=sys.stderr,
            )
    else:
        profile = Path(args.profile)
        if not profile.is_file():
            raise LeanEyeError(f"--profile: {profile} is not a file (give a Fast DDS XML profile, or none)")
    config = ros_bench.BenchConfig(
        engine=None if args.engine is None else str(args.engine),
        sources=[str(source) for source in args.sources],
        topic=args.topic,
        frames=args.frames,
        runs=args.runs,
        rate_hz=args.rate,
        modes=modes,
        conf=args.conf,
        iou=args.iou,
        **backend_settings(args),
    )
    result = ros_bench.run_bench(config, profile)
    print_ros_bench(result)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def print_ros_bench(result: dict) -> None:
    config, sessions = result["config"], result["sessions"]
    engine_input = next(
        (s["modes"][m]["engine_input"] for s in sessions for m in ROS_DETECTOR_MODES if m in s["modes"]), None
    )
    sizes = sorted(
        {tuple(size) for session in sessions for figures in _figure_sets(session) for size in figures["frame_sizes"]}
    )
    engine = f"{config['engine']} ({engine_input[0]}x{engine_input[1]} input) on " if engine_input else ""
    print(f"{engine}{'; '.join(sessions[0]['frames_described'])}, frames {', '.join(f'{w}x{h}' for w, h in sizes)}")
    print(
        f"  {config['runs']} timed frames per path after {result['warmup_frames']} untimed ones, sent at most "
        f"{config['rate_hz']:g} Hz, each once the previous one was answered"
    )
    print(f"  malloc env: {' '.join(f'{k}={v}' for k, v in result['keep_memory_env'].items())}")
    for session in sessions:
        load = " ".join(f"{value:.2f}" for value in session["load"])
        print(f"  load average before the runs with {_setting_name(session)}: {load}")
    print(f"\n  {'per frame, ms':<46}{'p50':>9}{'p90':>9}{'p99':>9}{'ratio':>8}{'added p50':>11}{'delivered':>11}")
    for mode, title in (("inprocess", "in one process and one executor"), ("processes", "between processes")):
        measured = [session for session in sessions if mode in session["modes"]]
        if measured:
            print(f"  {title}")
        for session in measured:
            figures = session["modes"][mode]
            print(f"    {_setting_name(session)}")
            _row("Detector.detect alone", figures.get("alone_ms"))
            _row(
                "image publish -> detections received",
                figures.get("path_ms"),
                figures.get("ratio"),
                figures.get("added_ms"),
                f"{figures['delivered']}/{figures['frames']}",
            )
            _row("  outside the node's receipt -> publish", figures.get("outside_node_ms"))
    measured = [session for session in sessions if "transport" in session["modes"]]
    if measured:
        print("  transport alone: image publish -> callback in another process")
    for session in measured:
        print(f"    {_setting_name(session)}")
        for reliability, figures in session["modes"]["transport"].items():
            delivered = f"{figures['delivered']}/{figures['frames']}"
            _row(reliability.replace("_", " "), figures.get("one_way_ms"), delivered=delivered)
            _row("  of which the publish call", figures["publish_call_ms"])


def _figure_sets(session: dict) -> list[dict]:
    modes = session["modes"]
    return [modes[m] for m in ROS_DETECTOR_MODES if m in modes] + list(modes.get("transport", {}).values())


def _setting_name(session: dict) -> str:
    name = "default transports" if session["profile"] is None else f"profile {Path(session['profile']).name}"
    return f"{name} + malloc env" if session["keep_memory"] else name


def _row(
    label: str, ms: dict | None, ratio: float | None = None, added: dict | None = None, delivered: str = ""
) -> None:
    figures = "".join(f"{ms[p]:9.3f}" for p in ("p50", "p90", "p99")) if ms else f"{'(none arrived)':>27}"
    ratio_text = f"{ratio:8.3f}" if ratio is not None else " " * 8
    added_text = f"{added['p50']:+11.3f}" if added else " " * 11
    print(f"      {label:<40}{figures}{ratio_text}{added_text}{delivered:>11}")


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

    ros = kinds.add_parser(
        "ros",
        help="latency the ROS 2 node and transport add to Detector.detect",
        description="Per frame, image publish -> detections received (the detector node in this process, "
        "then in another one) next to Detector.detect alone on the same frames, interleaved; and the "
        "transport alone between two processes, without and with the Fast DDS profile for large images, "
        "reliable and best effort. Needs ROS 2 (a sourced setup.bash). Notes: docs/ros-bench.md.",
    )
    ros.add_argument("--engine", type=Path, help="engine directory (model + manifest.json); not needed for transport")
    ros.add_argument(
        "sources",
        nargs="+",
        type=Path,
        help="image files, directories of images and/or rosbag2 bags (folder, .mcap or .db3)",
    )
    add_image_topic_option(ros)
    ros.add_argument(
        "--frames",
        type=int_in("--frames", "a positive number", 1),
        default=50,
        help="use at most this many distinct frames",
    )
    ros.add_argument(
        "--runs",
        type=int_in("--runs", "a positive number", 1),
        default=MIN_BENCH_RUNS,
        help="frames timed per path (cycling; default: %(default)s)",
    )
    ros.add_argument(
        "--mode",
        action="append",
        choices=ROS_MODES,
        help="what to measure; repeat for several (default: all): the node in this process, the node in "
        "another process, the transport alone",
    )
    ros.add_argument(
        "--profile",
        help="Fast DDS XML profile measured beside the defaults (processes, transport), or none "
        "(default: the shipped config/fastdds_large_images.xml)",
    )
    ros.add_argument(
        "--rate",
        type=frame_rate("--rate"),
        default=30.0,
        help="send frames at most this often, Hz (default: %(default)s)",
    )
    add_detection_options(ros)
    add_json_option(ros, "the figures")
    add_force_option(ros, "--json file")
    ros.set_defaults(func=run_bench_ros)
