"""What a frame costs on a GPU through the PyTorch backend, each way side by side in one run, on the
same frames (procedural 1224x370 driving scenes, KITTI's size): the network alone eager in FP32 and
FP16, the network alone replayed as a CUDA graph, and whole frames through `Detector.detect` with
CPU pre/post-processing around the graph and with everything on the GPU. Ratios are printed beside
the absolute medians; goal P7 of issue 19 is the last row against the first and the third.

On a CPU (`--device cpu`: no FP16, no graphs) it measures the eager network and both pipelines,
which is how it is tested here. Notes: docs/gpu-pipeline.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from leaneye.detector import Detector
from leaneye.scenes.render import generate_frames

from .backends.pytorch import PyTorchBackend

# P7: end to end <= 1.5 ms, >= 6x eager PyTorch, within 1.3x of bare CUDA-graph replay.
GOAL_MS = 1.5
GOAL_VS_EAGER = 6.0
GOAL_VS_REPLAY = 1.3


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run, runs: int, device: torch.device) -> float:
    """Median wall time of `run()` over `runs` calls, synchronised after each (after 5 warm-up calls)."""
    for _ in range(5):
        run()
    _synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# The network alone, run by the PyTorch backend as the Detector runs it: label -> its extra options.
# Rows that need CUDA (FP16, graphs) are left out on the CPU. The replay row includes the backend's
# copy of the input into the graph's static input, as every frame does.
NETWORK_VARIANTS = (
    ("network, eager FP32", {"fp16": False, "cuda_graph": False}),
    ("network, eager FP16", {"fp16": True, "cuda_graph": False}),
    ("network, FP16 CUDA-graph replay", {"fp16": True, "cuda_graph": True}),
)


def _network_rows(engine: Path, device: torch.device, runs: int) -> list[tuple[str, float]]:
    """The network alone on a fixed input, each variant of NETWORK_VARIANTS this device runs."""
    from leaneye.backends import BackendOptions
    from leaneye.engine import load_manifest, model_file

    manifest = load_manifest(engine)
    rows = []
    for label, extra in NETWORK_VARIANTS:
        if device.type != "cuda" and any(extra.values()):
            continue
        options = BackendOptions(device=str(device), extra={**extra, "device_pipeline": False})
        backend = PyTorchBackend(model_file(engine, manifest), manifest.input.name, manifest.input.shape, options)
        backend.activate()
        try:
            x = torch.rand(manifest.input.shape, device=device, dtype=backend.dtype)
            rows.append((label, _median_ms(lambda backend=backend, x=x: backend.infer_on_device(x), runs, device)))
        finally:
            backend.deactivate()
    return rows


def _frame_rows(engine: Path, device: torch.device, frames: list, runs: int) -> tuple[list, dict]:
    """Whole frames through Detector.detect: CPU pre/post around the backend, then all on the device."""
    rows, stages = [], {}
    for label, on_device in (("frame, CPU pre/post + backend", False), ("frame, all on the device", True)):
        with Detector.from_engine(engine, device=str(device), extra={"device_pipeline": on_device}) as detector:
            cycle = iter(frames * (runs // len(frames) + 6))
            totals, per_stage = [], {"preprocess": [], "inference": [], "postprocess": []}
            for _ in range(5):
                detector.detect(next(cycle))
            for _ in range(runs):
                start = time.perf_counter()
                found = detector.detect(next(cycle))
                totals.append((time.perf_counter() - start) * 1e3)
                for name in per_stage:
                    per_stage[name].append(found.timings[name])
            rows.append((label, statistics.median(totals)))
            stages[label] = {name: statistics.median(values) for name, values in per_stage.items()}
    return rows, stages


def run_gpu_bench(engine: Path, device: str, runs: int, frame_count: int, out=None) -> dict:
    """Every row's median (ms), the per-stage split of the two frame rows, and P7's verdict on CUDA."""
    out = out or sys.stdout
    device = torch.device(device)
    frames = [frame.image for frame in generate_frames(frame_count, seed=7)]
    network = _network_rows(engine, device, runs)
    whole, stages = _frame_rows(engine, device, frames, runs)
    rows = network + whole
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{engine} on {name} (torch {torch.__version__}); {len(frames)} frames 1224x370, median of {runs}", file=out)
    eager = rows[0][1]
    for label, ms in rows:
        print(f"  {label:36s} {ms:8.3f} ms   {eager / ms:6.2f}x eager FP32", file=out)
    for label, per_stage in stages.items():
        split = ", ".join(f"{stage} {ms:.3f}" for stage, ms in per_stage.items())
        print(f"    {label}: {split} ms", file=out)
    result = {"device": name, "rows": dict(rows), "stages": stages, "runs": runs, "frames": len(frames)}
    if device.type == "cuda":
        end_to_end, replay = rows[-1][1], rows[2][1]
        verdict = {
            "end_to_end_ms": end_to_end,
            "vs_eager": eager / end_to_end,
            "vs_replay": end_to_end / replay,
        }
        verdict["met"] = bool(
            end_to_end <= GOAL_MS and verdict["vs_eager"] >= GOAL_VS_EAGER and verdict["vs_replay"] <= GOAL_VS_REPLAY
        )
        print(
            f"  P7: {end_to_end:.3f} ms (goal <= {GOAL_MS}), {verdict['vs_eager']:.2f}x eager (goal >= {GOAL_VS_EAGER}), "
            f"{verdict['vs_replay']:.2f}x graph replay (goal <= {GOAL_VS_REPLAY}): {'met' if verdict['met'] else 'NOT met'}",
            file=out,
        )
        result["p7"] = verdict
    return result


def agreement(engine: Path, device: str, frame_count: int) -> dict:
    """How far the device pipeline's detections are from the CPU path's, on the same frames."""
    frames = [frame.image for frame in generate_frames(frame_count, seed=11)]
    found = {}
    for on_device in (False, True):
        with Detector.from_engine(engine, device=device, extra={"device_pipeline": on_device}) as detector:
            found[on_device] = [detector.detect(frame) for frame in frames]
    worst_px, same = 0.0, 0
    for cpu, gpu in zip(found[False], found[True]):
        if len(cpu.boxes) == len(gpu.boxes) and np.array_equal(cpu.class_ids, gpu.class_ids):
            same += 1
            if len(cpu.boxes):
                worst_px = max(worst_px, float(np.abs(cpu.boxes - gpu.boxes).max()))
    return {"frames": len(frames), "frames_with_same_detections": same, "max_box_difference_px": worst_px}
