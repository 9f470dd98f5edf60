"""The committed tiny engine (tests/data/tiny_engine): Detector.detect end to end where neither onnx
nor ../shared is installed, and the committed files are what tests/data/make_tiny_engine.py builds."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_CLASSES, TINY_EMITTED, TINY_ENGINE_DIR, TINY_INPUT_HW, write_tiny_engine

pytestmark = pytest.mark.runtime_core
pytest.importorskip("onnxruntime")

from leaneye.detector import Detector  # noqa: E402


def test_committed_tiny_engine_detects_end_to_end():
    height, width = TINY_INPUT_HW
    image = np.full((2 * height, 2 * width, 3), 50, np.uint8)  # twice the input: boxes scale by 2, no padding
    with Detector.from_engine(TINY_ENGINE_DIR, conf=0.25, iou=0.45, threads=1) as detector:
        found = detector.detect(image)
    # The overlapping second row is suppressed; boxes come back in image pixels.
    np.testing.assert_allclose(found.boxes, TINY_EMITTED[[0, 2], :4] * 2, atol=1e-3)
    np.testing.assert_allclose(found.scores, [0.9, 0.7], atol=1e-6)
    assert found.names == ("car", "person") and found.class_names == TINY_CLASSES


def test_committed_tiny_engine_is_what_the_script_builds(tmp_path):
    pytest.importorskip("onnx")
    write_tiny_engine(tmp_path / "engine")
    for name in ("model.onnx", "manifest.json"):
        assert (tmp_path / "engine" / name).read_bytes() == (TINY_ENGINE_DIR / name).read_bytes(), (
            f"{name}: rerun tests/data/make_tiny_engine.py"
        )
