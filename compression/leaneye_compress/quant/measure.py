"""What the calibration search measures: how far a model's outputs move from the FP32 model's, and
how fast ONNX Runtime runs several models side by side on this machine."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np


def session(model_bytes: bytes, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads (0 = its default), all optimisations on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: QDQ models make ORT warn about every unfused pair
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def run_frames(model_bytes: bytes, input_name: str, inputs: np.ndarray, threads: int) -> list[list[np.ndarray]]:
    """The model's outputs for each frame of `inputs` (N, C, H, W), batch 1 each."""
    runner = session(model_bytes, threads)
    return [runner.run(None, {input_name: inputs[k : k + 1]}) for k in range(len(inputs))]


def output_error(reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean squared difference of the outputs, per output feature (last axis) relative to that
    feature's variance under the reference, averaged: 0 = identical, 1 = as far off as the spread
    of the reference itself. Per feature, so that box coordinates in pixels do not drown scores."""
    errors = []
    for index in range(len(reference[0])):
        ref = np.stack([frame[index] for frame in reference]).astype(np.float64)
        cand = np.stack([frame[index] for frame in candidate]).astype(np.float64)
        ref, cand = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
        variance = ref.var(axis=0)
        # A feature that hardly varies (a constant column) must not turn rounding noise into a huge error.
        floor = 1e-3 * float(variance.mean()) + 1e-12
        errors.append(float(np.mean(((cand - ref) ** 2).mean(axis=0) / np.maximum(variance, floor))))
    return float(np.mean(errors))


def interleaved_latency(
    models: Sequence[bytes], input_name: str, tensor: np.ndarray, runs: int, warmup: int, threads: int
) -> list[dict]:
    """{"p50_ms", "p99_ms", "mean_ms", "runs"} of inference alone for each model, measured side by
    side: each round runs every model once, in an order rotated per round, so that a machine
    getting busier or quieter affects all of them alike."""
    sessions = [session(model, threads) for model in models]
    feed = {input_name: tensor}
    for runner in sessions:
        for _ in range(warmup):
            runner.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for round_index in range(runs):
        for offset in range(len(sessions)):
            k = (round_index + offset) % len(sessions)
            start = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append((time.perf_counter() - start) * 1e3)
    return [
        {
            "p50_ms": round(float(np.percentile(t, 50)), 3),
            "p99_ms": round(float(np.percentile(t, 99)), 3),
            "mean_ms": round(float(np.mean(t)), 3),
            "runs": runs,
        }
        for t in times
    ]
