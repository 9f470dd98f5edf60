"""Letterboxing puts frames of any size into square or rectangular inputs and its inverse finds them again."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leaneye.vision.letterbox import letterbox, letterbox_transform

pytestmark = pytest.mark.runtime_core

FRAME_SIZES = [(370, 1224), (480, 640), (640, 480), (1080, 1920), (100, 100), (301, 77)]  # (height, width)
INPUT_SIZES = [(416, 416), (384, 640), (640, 384)]


def drawn_frame(height, width):
    """A black frame with a white rectangle at a known place (x1, y1, x2, y2, x2/y2 exclusive)."""
    box = np.array([width * 0.21, height * 0.33, width * 0.62, height * 0.81]).round()
    frame = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box.astype(int)
    frame[y1:y2, x1:x2] = 255
    return frame, box.astype(np.float32)


def found_box(image):
    """Bounding box of the bright pixels: edges where resampling crossed half intensity."""
    ys, xs = np.nonzero(image[:, :, 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("align", ["center", "top-left"])
@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("frame_size", FRAME_SIZES)
def test_drawn_box_comes_back_within_one_pixel(frame_size, input_size, align):
    frame, box = drawn_frame(*frame_size)
    canvas, transform = letterbox(frame, input_size, align, pad_value=114)
    assert canvas.shape == input_size + (3,)
    network_box = found_box(canvas)
    np.testing.assert_allclose(network_box, transform.to_network(box[None])[0], atol=1.0)
    # One network pixel is 1 / scale frame pixels: the inverse is exact up to that quantisation.
    back = transform.to_original(network_box[None], frame_size)[0]
    np.testing.assert_allclose(back, box, atol=max(1.0, 1.0 / transform.scale))
    # Exactly the resized frame inside, only padding outside.
    x0, y0, w, h = transform.pad_x, transform.pad_y, transform.width, transform.height
    np.testing.assert_array_equal(
        canvas[y0 : y0 + h, x0 : x0 + w], cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    )
    outside = np.ones(input_size, bool)
    outside[y0 : y0 + h, x0 : x0 + w] = False
    assert np.all(canvas[outside] == 114)
    if align == "top-left":
        assert (x0, y0) == (0, 0)
    else:
        assert abs((input_size[1] - w) - 2 * x0) <= 1 and abs((input_size[0] - h) - 2 * y0) <= 1


def test_reused_output_buffer_is_written_in_place():
    out = np.zeros((416, 416, 3), np.uint8)
    frame, _ = drawn_frame(600, 300)  # tall: the resized frame is a column slice of `out`
    canvas, transform = letterbox(frame, (416, 416), "center", out=out)
    assert canvas is out
    assert transform.pad_x > 0 and out[:, transform.pad_x : transform.pad_x + transform.width].max() == 255


def test_to_original_clips_to_the_frame():
    transform = letterbox_transform((100, 200), (320, 320), "center")
    boxes = transform.to_original(np.array([[-50, -50, 400, 400]], np.float32), (100, 200))
    np.testing.assert_array_equal(boxes, [[0, 0, 200, 100]])


def test_zero_size_frame_is_refused():
    with pytest.raises(ValueError, match="zero size"):
        letterbox_transform((0, 10), (320, 320))
