"""Tiny real ONNX engines for the builtin decoder, built with onnx.helper: fixed candidate rows,
optionally passed through a few more nodes (e.g. to poison them with NaN on real frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leaneye.engine import write_engine
from leaneye.scenes.classes import SCENE_CLASSES

INPUT_HW = (96, 320)


def builtin_rows(emitted: list, num_classes: int = len(SCENE_CLASSES)) -> np.ndarray:
    """(1, N, 4 + classes) rows from (box xyxy in network pixels, class index, score) triples."""
    rows = np.zeros((1, len(emitted), 4 + num_classes), np.float32)
    for row, (box, class_index, score) in enumerate(emitted):
        rows[0, row, :4] = box
        rows[0, row, 4 + class_index] = score
    return rows


def write_builtin_engine(path: Path, rows: np.ndarray, nodes: list | None = None, initializers: list = ()) -> Path:
    """An engine whose model gives `rows` ("emitted"); `nodes` (default: Identity) compute "output"
    from "emitted", "images" and `initializers` (name -> array pairs)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")  # to run it
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes or [helper.make_node("Identity", ["emitted"], ["output"])],
        "fixed_boxes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *INPUT_HW])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(rows.shape))],
        initializer=[numpy_helper.from_array(rows, "emitted")]
        + [numpy_helper.from_array(value, name) for name, value in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_engine(
        path,
        model.SerializeToString(),
        {
            "format_version": 1,
            "backend": "onnxruntime",
            "precision": "fp32",
            "model": "model.onnx",
            "input": {
                "name": "images",
                "shape": [1, 3, *INPUT_HW],
                "layout": "NCHW",
                "dtype": "float32",
                "color": "bgr",
                "scale": 1 / 255,
                "mean": None,
                "std": None,
            },
            "letterbox": {"align": "center", "pad_value": 114},
            "decoder": {"type": "builtin"},
            "class_names": list(SCENE_CLASSES),
        },
    )
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
        helper.make_node("Where", ["box_columns", "poisoned", "emitted"], ["output"]),
    ]
    return nodes, [("box_columns", box_columns)]
