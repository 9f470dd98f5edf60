"""leaneye.msgs with rclpy's generated classes, and the bag typestore against them: a message built
by either kind serialises to the same CDR bytes, so what the nodes publish and what `leaneye replay`
writes into bags are the same messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leaneye import msgs
from leaneye.latency import FrameLatency

rclpy = pytest.importorskip("rclpy")
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

STAMP = 1_700_000_000_123_456_789
BOXES = np.array([[10.5, 20.25, 110.0, 220.75], [0.0, 0.0, 1.0, 3.0]], np.float32)
LATENCY = FrameLatency(1.5, 2.25, 7.0, 0.5, 11.5, 2, receipt_to_publish_ms=14.5, age_ms=40.25, frames_dropped=3)


def test_generated_classes_carry_images_and_headers():
    types = msgs.GeneratedTypes()
    header = msgs.header(STAMP, "cam", types)
    assert isinstance(header, Header) and msgs.stamp_to_ns(header.stamp) == STAMP and header.frame_id == "cam"
    bgr = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for encoding, step in (("bgr8", None), ("rgb8", 20), ("mono8", None)):
        image = msgs.image_msg(bgr, STAMP, "cam", encoding=encoding, step=step, types=types)
        assert isinstance(image, Image) and (image.encoding, image.height, image.width) == (encoding, 6, 5)
        expected = (
            cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) if encoding == "mono8" else bgr
        )
        assert np.array_equal(msgs.image_from_any_msg(image), expected)
    png = msgs.compressed_image_msg(bgr, STAMP, "cam", fmt="png", types=types)
    assert isinstance(png, CompressedImage) and np.array_equal(msgs.image_from_any_msg(png), bgr)
    assert msgs.msgtype_of(png) == msgs.COMPRESSED_IMAGE


def test_image_pixels_are_read_in_place():
    image = msgs.image_msg(np.zeros((4, 4, 3), np.uint8), STAMP, "cam", types=msgs.GeneratedTypes())
    pixels = msgs.image_from_msg(image)
    image.data[0] = 200  # the generated class holds array('B'): the pixels are a view of it
    assert pixels[0, 0, 0] == 200


def _both(build):
    """The same message built with rclpy's classes and with the bag typestore's, as the bag store
    serialises them. rclpy's bytes go through the store's deserialiser first: Fast CDR leaves its
    alignment padding unwritten, so only the values can be compared, not raw bytes."""
    store = msgs.typestore()
    stored = build(msgs.bag_types())
    msgtype = msgs.msgtype_of(stored)
    from_rclpy = store.deserialize_cdr(bytes(serialize_message(build(msgs.GeneratedTypes()))), msgtype)
    return bytes(store.serialize_cdr(from_rclpy, msgtype)), bytes(store.serialize_cdr(stored, msgtype))


@pytest.mark.parametrize(
    "build",
    [
        lambda t: msgs.detection_array_msg(msgs.header(STAMP, "cam", t), BOXES, [0.9, 0.5], ["0", "2"], types=t),
        lambda t: msgs.label_info_msg(msgs.header(STAMP, "cam", t), ["car", "person"], 0.25, types=t),
        lambda t: msgs.frame_latency_msg(msgs.header(STAMP, "cam", t), LATENCY, types=t),
        lambda t: msgs.diagnostic_array_msg(msgs.header(STAMP, "", t), "n", "h", "ERROR", "m", {"k": "v"}, t),
        lambda t: msgs.clock_msg(STAMP, t),
        lambda t: msgs.image_msg(np.arange(60, dtype=np.uint8).reshape(4, 5, 3), STAMP, "cam", types=t),
    ],
    ids=["Detection2DArray", "LabelInfo", "FrameLatency", "DiagnosticArray", "Clock", "Image"],
)
def test_generated_and_bag_messages_serialise_identically(build):
    generated, stored = _both(build)
    assert generated == stored
