"""`leaneye-compress bench-gpu`: a PyTorch engine per frame on a GPU, eager against CUDA-graph replay
against whole frames with CPU or GPU pre/post-processing, side by side in one run (issue 19's P7).

    leaneye-compress export compression/leaneye_compress/default_model/model.pt --backend pytorch --out runs/pt
    leaneye-compress bench-gpu --engine runs/pt --device cuda:0 --json bench_gpu.json
"""

from __future__ import annotations

import argparse
import json

from leaneye.atomic import atomic_write_text, check_output_path
from leaneye.cli.options import add_engine_option, add_force_option, add_json_option, int_in


def run(args: argparse.Namespace) -> int:
    from ..gpu_bench import agreement, run_gpu_bench

    if args.json is not None:
        check_output_path(args.json, args.force, "--json")
    result = run_gpu_bench(args.engine, args.device, args.runs, args.frames)
    result["agreement"] = agreement(args.engine, args.device, args.frames)
    same = result["agreement"]
    print(
        f"  device pipeline vs CPU pre/post: same detections on {same['frames_with_same_detections']} of "
        f"{same['frames']} frames, boxes within {same['max_box_difference_px']:.3f} px"
    )
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench-gpu", help="per-frame cost of a PyTorch engine on a GPU: eager, CUDA graph, CPU vs GPU pre/post"
    )
    add_engine_option(p)
    p.add_argument("--device", default="cuda:0", help="torch device (default: %(default)s; cpu runs the eager rows)")
    p.add_argument("--runs", type=int_in("--runs", "at least 20", 20), default=200, help="timed runs per row")
    p.add_argument("--frames", type=int_in("--frames", "a positive number", 1), default=20, help="distinct frames")
    add_json_option(p, "the figures")
    add_force_option(p, "--json file")
    p.set_defaults(func=run)
