"""Image topics of a bag: image_transport's naming and decoding each message to BGR pixels."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import msgs
from ..errors import LeanEyeError
from .reader import BagReader

# Humble's rosbag2 reads metadata version 8; version 9 stores QoS profiles in a form it cannot parse.


IMAGE_TYPES = (msgs.IMAGE, msgs.COMPRESSED_IMAGE)
COMPRESSED_SUFFIX = "/compressed"


def find_image_topic(topics: Mapping[str, str], topic: str) -> str:
    """The image topic to read for `topic`, following image_transport's naming.

    `topics` maps topic -> message type. A raw topic that is absent falls back to its
    `/compressed` sibling, and a `/compressed` topic that is absent to its raw base.
    """
    if topic in topics:
        if topics[topic] not in IMAGE_TYPES:
            raise LeanEyeError(f"topic {topic}: carries {topics[topic]}, not {' or '.join(IMAGE_TYPES)}")
        return topic
    if topic.endswith(COMPRESSED_SUFFIX):
        sibling, sibling_type = topic[: -len(COMPRESSED_SUFFIX)], msgs.IMAGE
    else:
        sibling, sibling_type = topic + COMPRESSED_SUFFIX, msgs.COMPRESSED_IMAGE
    if topics.get(sibling) == sibling_type:
        return sibling
    raise LeanEyeError(f"topic {topic}: not in the bag, nor {sibling}; image topics present: {_image_topics(topics)}")


def _image_topics(topics: Mapping[str, str]) -> str:
    images = [f"{name} ({msgtype})" for name, msgtype in sorted(topics.items()) if msgtype in IMAGE_TYPES]
    return ", ".join(images) or "none"


class ImageFrame(NamedTuple):
    stamp_ns: int  # the image header's stamp
    header: Any  # std_msgs/msg/Header
    image: np.ndarray  # BGR uint8 (H, W, 3)
    decode_ms: float  # turning the message into BGR pixels (JPEG/PNG decoding, colour conversion)
    log_time_ns: int  # when the message was recorded: outputs derived from it are logged at the same time


class FrameError(NamedTuple):
    index: int  # position of the message on its topic
    log_time_ns: int
    reason: str


def iter_images(reader: BagReader, topic: str) -> Iterator[ImageFrame | FrameError]:
    """Every image on `topic` as BGR pixels, or a FrameError for a message that does not decode.

    One bad frame in a long recording is the caller's to count and skip; an unreadable bag or a
    short read (fewer messages than promised) still raises LeanEyeError.
    """
    if reader.topics.get(topic) not in IMAGE_TYPES:
        raise LeanEyeError(
            f"{reader.path}: topic {topic} is not an image topic of this bag; image topics present: "
            f"{_image_topics(reader.topics)}"
        )
    for index, (_, msgtype, log_time_ns, data) in enumerate(reader.raw_messages([topic])):
        try:
            msg = reader.deserialize(data, msgtype)
        except Exception as exc:  # noqa: BLE001 - CDR decoding of corrupt bytes fails in many ways
            yield FrameError(index, log_time_ns, f"does not decode as {msgtype} ({type(exc).__name__}: {exc})")
            continue
        started = time.perf_counter()
        try:
            image = msgs.image_from_any_msg(msg)
        except LeanEyeError as exc:
            yield FrameError(index, log_time_ns, str(exc))
            continue
        decode_ms = (time.perf_counter() - started) * 1000.0
        yield ImageFrame(msgs.stamp_to_ns(msg.header.stamp), msg.header, image, decode_ms, log_time_ns)
