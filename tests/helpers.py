"""Test helpers shared by tests/runtime and tests/offline: tiny real ONNX models built with onnx.helper
and the committed tiny engine (tests/data/tiny_engine, built by tests/data/make_tiny_engine.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from leaneye.scenes.classes import SCENE_CLASSES

# Test frames and the objects the constant models below are made to emit (engine tests, both halves).
CLASSES = ["car", "person", "bicycle"]
FRAME_SIZE = (300, 500)  # height, width: letterboxed with padding into any square input
# Objects in frame pixels, their classes and scores; the models emit them in network pixels.
OBJECTS = np.array([[20, 30, 120, 90], [200, 100, 260, 280], [400, 10, 490, 60]], np.float32)
OBJECT_CLASSES = np.array([0, 1, 2])
OBJECT_SCORES = np.array([0.9, 0.8, 0.7], np.float32)

TINY_ENGINE_DIR = Path(__file__).resolve().parent / "data" / "tiny_engine"
TINY_INPUT_HW = (64, 96)
TINY_CLASSES = ("car", "person")
# What the tiny engine always emits, in network pixels: (x1, y1, x2, y2, score per class). The
# second row overlaps the first (IoU 0.82) with a lower score: NMS at 0.45 keeps only the first.
TINY_EMITTED = np.array(
    [
        [10, 8, 40, 38, 0.9, 0.0],
        [12, 8, 42, 38, 0.6, 0.0],
        [60, 20, 80, 60, 0.0, 0.7],
    ],
    np.float32,
)


# --- evaluation: synthetic ground truth and detections ------------------------------------------


def scenes(n_images: int, seed: int = 0):
    """Images with 2-9 car/person boxes of all COCO sizes (10-300 px sides), every fourth box an ignore region, one
    ignore-for-all region per image in a corner no box reaches (x > 1200)."""
    from leaneye.eval import GroundTruth, ImageTruth

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        k = int(rng.integers(2, 10))
        corner = rng.uniform(0, 880, (k, 2))
        size = np.exp(rng.uniform(np.log(10), np.log(300), (k, 2)))
        names = tuple(rng.choice(["car", "person"], k))
        ignore = np.arange(k) % 4 == 3
        images.append(
            ImageTruth(
                i + 10,
                f"{i}.png",
                1280,
                720,
                np.hstack([corner, corner + size]),
                names,
                ignore,
                ignore_all=np.array([[1200.0, 620.0, 1275.0, 710.0]]),
            )
        )
    return GroundTruth(images, ("car", "person"))


def perfect(gt) -> dict:
    """Each image's objects as detections (score 1)."""
    from leaneye.eval import ImageDetections

    return {im.image_id: ImageDetections.from_truth(im) for im in gt.images}


def jittered(gt, pixels: float, seed: int = 1) -> dict:
    """The objects with boxes moved by N(0, pixels) and random scores."""
    from leaneye.eval import ImageDetections

    rng = np.random.default_rng(seed)
    out = {}
    for image_id, dets in perfect(gt).items():
        out[image_id] = ImageDetections(
            dets.boxes + rng.normal(0, pixels, dets.boxes.shape), rng.uniform(0.2, 1.0, len(dets)), dets.class_names
        )
    return out


# --- engines ------------------------------------------------------------------------------------


def constant_model(
    output: np.ndarray, input_shape, input_name="images", metadata=None, nodes=None, initializers=()
) -> bytes:
    """An ONNX model that always emits `output` (as output0), ignoring its image input; or, with
    `nodes`, computes output0 from "emitted" (= `output`), the input and `initializers` (name, array)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes or [helper.make_node("Identity", ["emitted"], ["output0"])],
        "constant_detector",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output.astype(np.float32), "emitted")]
        + [numpy_helper.from_array(value, name) for name, value in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by the oldest ONNX Runtime the vehicle side supports
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def engine_manifest(
    input_hw,
    class_names,
    decoder: str = "builtin",
    color: str = "bgr",
    scale: float = 1 / 255,
    align: str = "center",
    **decoder_params,
) -> dict:
    """An engine manifest for an ONNX model with one NCHW float32 image input `images`."""
    return {
        "format_version": 1,
        "backend": "onnxruntime",
        "precision": "fp32",
        "model": "model.onnx",
        "input": {
            "name": "images",
            "shape": [1, 3, *input_hw],
            "layout": "NCHW",
            "dtype": "float32",
            "color": color,
            "scale": scale,
            "mean": None,
            "std": None,
        },
        "letterbox": {"align": align, "pad_value": 114},
        "decoder": {"type": decoder, **decoder_params},
        "class_names": list(class_names),
    }


def write_yolox_nano_engine(path: Path, fixtures: Path) -> Path:
    """The shared YOLOX-Nano fixture (`fixtures` = ../shared/fixtures) as an engine: BGR 0-255, top-left letterbox."""
    from leaneye.engine import write_engine

    yolox = fixtures / "yolox_nano"
    names = [name.strip() for name in (yolox / "coco_classes.txt").read_text().splitlines() if name.strip()]
    manifest = engine_manifest((416, 416), names, "yolox", scale=1.0, align="top-left", strides=[8, 16, 32])
    write_engine(path, yolox / "yolox_nano.onnx", manifest)
    return path


def write_tiny_engine(engine_dir: Path, force: bool = False) -> None:
    """The tiny engine: a constant model emitting TINY_EMITTED, as committed in tests/data/tiny_engine."""
    from leaneye.engine import write_engine

    write_engine(
        engine_dir,
        constant_model(TINY_EMITTED[None], [1, 3, *TINY_INPUT_HW]),
        engine_manifest(TINY_INPUT_HW, TINY_CLASSES),
        force=force,
    )


def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, FRAME_SIZE + (3,), dtype=np.uint8)


def network_boxes(input_size, align):
    """OBJECTS in the network pixels of a letterboxed FRAME_SIZE frame."""
    from leaneye.vision.letterbox import letterbox_transform

    return letterbox_transform(FRAME_SIZE, input_size, align).to_network(OBJECTS)


def end2end_output(input_size):
    boxes = network_boxes(input_size, "center")
    rows = np.concatenate([boxes, OBJECT_SCORES[:, None], OBJECT_CLASSES[:, None]], axis=1)
    padding = np.zeros((5, 6), np.float32)  # end2end exports pad to a fixed K with zero scores
    return np.concatenate([rows, padding])[None]


# --- builtin-decoder engines over the scene classes (replay, pipeline) ----------------------------

BUILTIN_INPUT_HW = (96, 320)


def builtin_rows(emitted: list, num_classes: int = len(SCENE_CLASSES)) -> np.ndarray:
    """(1, N, 4 + classes) rows from (box xyxy in network pixels, class index, score) triples."""
    rows = np.zeros((1, len(emitted), 4 + num_classes), np.float32)
    for row, (box, class_index, score) in enumerate(emitted):
        rows[0, row, :4] = box
        rows[0, row, 4 + class_index] = score
    return rows


def write_builtin_engine(path: Path, rows: np.ndarray, nodes: list | None = None, initializers: list = ()) -> Path:
    """A builtin-decoder engine over the scene classes whose model gives `rows`, or what `nodes`
    compute from them (see `constant_model`)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")  # to run it
    from leaneye.engine import write_engine

    model = constant_model(rows, [1, 3, *BUILTIN_INPUT_HW], nodes=nodes, initializers=initializers)
    write_engine(path, model, engine_manifest(BUILTIN_INPUT_HW, SCENE_CLASSES))
    return path


def nan_on_lit_frames_nodes(rows: np.ndarray) -> tuple[list, list]:
    """Nodes (and initializers) that give `rows` on a blank input but NaN boxes (finite scores) on
    any frame with a lit pixel: sqrt(-max(input)) is 0 for the blank check run, NaN otherwise."""
    pytest.importorskip("onnx")
    from onnx import helper

    box_columns = np.zeros(rows.shape, dtype=bool)
    box_columns[..., :4] = True
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Neg", ["peak"], ["minus_peak"]),
        helper.make_node("Sqrt", ["minus_peak"], ["nan_if_lit"]),
        helper.make_node("Add", ["emitted", "nan_if_lit"], ["poisoned"]),
        helper.make_node("Where", ["box_columns", "poisoned", "emitted"], ["output0"]),
    ]
    return nodes, [("box_columns", box_columns)]


# --- long offline runs: interrupted once they have written a checkpoint ---------------------------


def interrupt_at_first_checkpoint(argv: list[str], checkpoint: Path, env: dict | None = None) -> tuple[int, str]:
    """Run `leaneye-compress ARGV` in a subprocess, send it Ctrl-C (SIGINT) once `checkpoint` exists (or
    it has ended, or 300 s passed), and return its exit status and standard error."""
    process = subprocess.Popen(
        [sys.executable, "-m", "leaneye_compress.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, err
