"""ROS 2 messages as plain data, without ROS: pure conversions and the `rosbags` typestore.

Every conversion that builds a message takes `types`, a `leaneye.msgs.types.MessageTypes` provider
of the classes to build (default: the rosbags typestore below, for bags; `GeneratedTypes()` for a
live ROS 2 graph). Conversions that read a message read only its fields, whichever class it is.

The typestore is ROS 2 Humble's (std_msgs, sensor_msgs, geometry_msgs, ...) plus the message
definitions shipped in `definitions/`: vision_msgs 4.x as Humble ships it, and LeanEye's own
leaneye_msgs/msg/FrameLatency (the same file as ros2_ws/src/leaneye_msgs/msg/FrameLatency.msg).
Bags written with this store carry those definitions, so ROS 2 tools can read them.
"""

from __future__ import annotations

import array
import functools
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import LeanEyeError
from ..image_io import decode_image
from ..latency import FrameLatency
from .types import GeneratedTypes as GeneratedTypes  # re-exported: msgs.GeneratedTypes() for a node
from .types import MessageTypes, RosbagsTypes

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore


IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
DETECTION_ARRAY = "vision_msgs/msg/Detection2DArray"
LABEL_INFO = "vision_msgs/msg/LabelInfo"
FRAME_LATENCY = "leaneye_msgs/msg/FrameLatency"

# Full type name -> file in definitions/.
MESSAGE_DEFINITIONS = {
    "vision_msgs/msg/Point2D": "Point2D.msg",
    "vision_msgs/msg/Pose2D": "Pose2D.msg",
    "vision_msgs/msg/BoundingBox2D": "BoundingBox2D.msg",
    "vision_msgs/msg/ObjectHypothesis": "ObjectHypothesis.msg",
    "vision_msgs/msg/ObjectHypothesisWithPose": "ObjectHypothesisWithPose.msg",
    "vision_msgs/msg/Detection2D": "Detection2D.msg",
    DETECTION_ARRAY: "Detection2DArray.msg",
    "vision_msgs/msg/VisionClass": "VisionClass.msg",
    LABEL_INFO: "LabelInfo.msg",
    FRAME_LATENCY: "FrameLatency.msg",
}

# Encodings of sensor_msgs/Image that image_from_msg reads (and image_msg writes), with their channel
# count. bgra8 is what CARLA's ROS bridge publishes.
IMAGE_ENCODINGS = {"bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4, "mono8": 1}
# OpenCV conversions from each encoding to BGR and back (None: the pixels are BGR already).
_TO_BGR = {
    "bgr8": None,
    "rgb8": cv2.COLOR_RGB2BGR,
    "bgra8": cv2.COLOR_BGRA2BGR,
    "rgba8": cv2.COLOR_RGBA2BGR,
    "mono8": cv2.COLOR_GRAY2BGR,
}
_FROM_BGR = {
    "bgr8": None,
    "rgb8": cv2.COLOR_BGR2RGB,
    "bgra8": cv2.COLOR_BGR2BGRA,
    "rgba8": cv2.COLOR_BGR2RGBA,
    "mono8": cv2.COLOR_BGR2GRAY,
}

_NS_PER_S = 1_000_000_000
MAX_STAMP_NS = 2**31 * _NS_PER_S  # builtin_interfaces/msg/Time holds int32 seconds


def message_definition(msgtype: str) -> str:
    """The text of one shipped .msg file."""
    return (resources.files(__package__) / "definitions" / MESSAGE_DEFINITIONS[msgtype]).read_text(encoding="utf-8")


# rosbags is imported where the typestore is built: a node that publishes with GeneratedTypes needs none.


def shipped_types() -> dict:
    """Field definitions of the shipped messages, ready for Typestore.register."""
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for msgtype in MESSAGE_DEFINITIONS:
        types.update(get_types_from_msg(message_definition(msgtype), msgtype))
    return types


def new_typestore() -> Typestore:
    """A fresh, mutable store: Humble's types plus the shipped ones."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(shipped_types())
    return store


@functools.cache
def typestore() -> Typestore:
    """The shared store (do not register more types into it; use new_typestore for that)."""
    return new_typestore()


@functools.cache
def bag_types() -> RosbagsTypes:
    """The default provider: classes of the shared typestore."""
    return RosbagsTypes(typestore())


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def header(stamp_ns: int, frame_id: str, types: MessageTypes | None = None) -> Any:
    """std_msgs/msg/Header for a stamp in nanoseconds since the epoch."""
    stamp_ns = int(stamp_ns)
    if not 0 <= stamp_ns < MAX_STAMP_NS:
        raise LeanEyeError(f"stamp_ns: expected nanoseconds in [0, 2^31 s), got {stamp_ns}")
    sec, nanosec = divmod(stamp_ns, _NS_PER_S)
    types = types or bag_types()
    return types.get("std_msgs/msg/Header")(
        stamp=types.get("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec), frame_id=str(frame_id)
    )


def image_msg(
    image: np.ndarray,
    stamp_ns: int,
    frame_id: str,
    encoding: str = "bgr8",
    step: int | None = None,
    types: MessageTypes | None = None,
) -> Any:
    """sensor_msgs/msg/Image from a BGR uint8 (H, W, 3) image (or (H, W) gray for mono8).

    The pixels are converted to `encoding` (one of IMAGE_ENCODINGS; alpha = 255). `step` (bytes per row) may exceed
    width * channels: rows are then padded, as some camera drivers do.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise LeanEyeError(f"encoding: unsupported '{encoding}'; expected one of {', '.join(IMAGE_ENCODINGS)}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise LeanEyeError(
            f"image: expected a non-empty uint8 (H, W, 3) or (H, W) array, got {image.dtype} {image.shape}"
        )
    if image.ndim == 3 and image.shape[2] != 3:
        raise LeanEyeError(f"image: expected 3 channels (BGR), got shape {image.shape}")
    if encoding == "mono8" and image.ndim == 2:
        pixels = image
    elif image.ndim == 2:
        raise LeanEyeError(f"image: {encoding} needs a BGR (H, W, 3) image, got gray {image.shape}")
    else:
        pixels = image if _FROM_BGR[encoding] is None else cv2.cvtColor(image, _FROM_BGR[encoding])
    height, width = pixels.shape[:2]
    row_bytes = width * IMAGE_ENCODINGS[encoding]
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise LeanEyeError(f"step: {step} bytes per row is less than width * channels = {row_bytes}")
    rows = np.zeros((height, step), dtype=np.uint8)
    rows[:, :row_bytes] = pixels.reshape(height, row_bytes)
    types = types or bag_types()
    return types.get(IMAGE)(
        header=header(stamp_ns, frame_id, types),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=types.uint8_array(rows.reshape(-1)),
    )


def _uint8_data(data: Any) -> np.ndarray:
    """A uint8[] field as a flat array: rosbags gives ndarrays, rclpy array('B') (read in place, no
    copy), hand-made messages bytes or lists."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise LeanEyeError(f"data: expected uint8 bytes, got an array of {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (array.array, bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.frombuffer(bytes(data), dtype=np.uint8)


def image_from_msg(msg: Any) -> np.ndarray:
    """BGR uint8 (H, W, 3) pixels of a sensor_msgs/msg/Image in one of IMAGE_ENCODINGS (alpha dropped).

    Row padding (step > width * channels) is dropped. The result may be a read-only view of msg.data.
    """
    encoding = str(msg.encoding).lower()
    channels = IMAGE_ENCODINGS.get(encoding)
    if channels is None:
        raise LeanEyeError(
            f"sensor_msgs/Image.encoding: unsupported '{msg.encoding}'; expected one of {', '.join(IMAGE_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise LeanEyeError(f"sensor_msgs/Image.height/width: expected a non-empty image, got {width}x{height}")
    if step < width * channels:
        raise LeanEyeError(f"sensor_msgs/Image.step: {step} is less than width * channels = {width * channels}")
    data = _uint8_data(msg.data)
    if data.size != step * height:
        raise LeanEyeError(
            f"sensor_msgs/Image.data: {data.size} bytes, expected step * height = {step} * {height} = {step * height}"
        )
    pixels = data.reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    return pixels if _TO_BGR[encoding] is None else cv2.cvtColor(pixels, _TO_BGR[encoding])


_ENCODE_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}


def compressed_image_msg(
    image: np.ndarray | bytes,
    stamp_ns: int,
    frame_id: str,
    fmt: str = "jpeg",
    quality: int = 90,
    types: MessageTypes | None = None,
) -> Any:
    """sensor_msgs/msg/CompressedImage from a BGR uint8 image (encoded here) or already-encoded bytes.

    `fmt` is image_transport's format field: "jpeg" or "png". `quality` is the JPEG quality (0-100).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = np.frombuffer(bytes(image), dtype=np.uint8)
    else:
        if fmt not in _ENCODE_EXTENSIONS:
            raise LeanEyeError(f"fmt: cannot encode '{fmt}'; expected one of {', '.join(_ENCODE_EXTENSIONS)}")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise LeanEyeError(f"image: expected a non-empty uint8 BGR image, got {image.dtype} {image.shape}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
        ok, encoded = cv2.imencode(_ENCODE_EXTENSIONS[fmt], image, params)
        if not ok:
            raise LeanEyeError(f"image: OpenCV could not encode a {image.shape} image as {fmt}")
        data = encoded.reshape(-1)
    types = types or bag_types()
    return types.get(COMPRESSED_IMAGE)(
        header=header(stamp_ns, frame_id, types), format=fmt, data=types.uint8_array(data)
    )


def image_from_compressed_msg(msg: Any) -> np.ndarray:
    """BGR uint8 (H, W, 3) pixels of a sensor_msgs/msg/CompressedImage (jpeg or png)."""
    data = _uint8_data(msg.data)
    return decode_image(data, f"sensor_msgs/CompressedImage.data ({data.size} bytes, format '{msg.format}')")


def msgtype_of(msg: Any) -> str:
    """The full type name of a message of either kind: rosbags' classes say it (`__msgtype__`); an
    rclpy-generated class lives in `<package>.msg._<snake_name>` and is named after the type."""
    msgtype = getattr(msg, "__msgtype__", None)
    if msgtype is not None:
        return msgtype
    cls = type(msg)
    package, kind = cls.__module__.split(".")[:2]
    return f"{package}/{kind}/{cls.__name__}"


def image_from_any_msg(msg: Any) -> np.ndarray:
    """BGR pixels of an Image or a CompressedImage."""
    msgtype = msgtype_of(msg)
    if msgtype == COMPRESSED_IMAGE:
        return image_from_compressed_msg(msg)
    if msgtype == IMAGE:
        return image_from_msg(msg)
    raise LeanEyeError(f"message: expected {IMAGE} or {COMPRESSED_IMAGE}, got {msgtype}")


def _identity_pose_with_covariance(types: MessageTypes) -> Any:
    return types.get("geometry_msgs/msg/PoseWithCovariance")(
        pose=types.get("geometry_msgs/msg/Pose")(
            position=types.get("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
            orientation=types.get("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        covariance=np.zeros(36, dtype=np.float64),
    )


def detection_array_msg(
    header_msg: Any,
    boxes_xyxy: np.ndarray,
    scores: Sequence[float],
    class_ids: Sequence[str],
    ids: Sequence[str] | None = None,
    types: MessageTypes | None = None,
) -> Any:
    """vision_msgs/msg/Detection2DArray: one Detection2D per box, each with one hypothesis.

    Boxes are (N, 4) x1, y1, x2, y2 in pixels; they become bbox center and size_x/size_y. Every
    Detection2D gets `header_msg` (the image's header). `ids` are optional tracking ids.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise LeanEyeError(f"boxes_xyxy: expected an (N, 4) array, got shape {boxes.shape}")
    count = len(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != count or len(class_ids) != count or (ids is not None and len(ids) != count):
        raise LeanEyeError(
            f"detections: {count} boxes but {len(scores)} scores, {len(class_ids)} class_ids"
            + ("" if ids is None else f", {len(ids)} ids")
        )
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise LeanEyeError("boxes_xyxy: expected finite boxes with x2 >= x1 and y2 >= y1")
    if not all(isinstance(class_id, str) for class_id in class_ids):
        raise LeanEyeError("class_ids: expected strings (vision_msgs 4.x class_id is a string)")
    types = types or bag_types()
    detections = []
    for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        bbox = types.get("vision_msgs/msg/BoundingBox2D")(
            center=types.get("vision_msgs/msg/Pose2D")(
                position=types.get("vision_msgs/msg/Point2D")(x=(x1 + x2) / 2, y=(y1 + y2) / 2), theta=0.0
            ),
            size_x=x2 - x1,
            size_y=y2 - y1,
        )
        hypothesis = types.get("vision_msgs/msg/ObjectHypothesisWithPose")(
            hypothesis=types.get("vision_msgs/msg/ObjectHypothesis")(
                class_id=class_ids[index], score=float(scores[index])
            ),
            pose=_identity_pose_with_covariance(types),
        )
        detections.append(
            types.get("vision_msgs/msg/Detection2D")(
                header=header_msg, results=[hypothesis], bbox=bbox, id="" if ids is None else str(ids[index])
            )
        )
    return types.get(DETECTION_ARRAY)(header=header_msg, detections=detections)


def boxes_from_detection_array(msg: Any) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(boxes_xyxy float32 (N, 4), scores float32 (N,), class_ids, ids) of a Detection2DArray.

    A detection with several hypotheses contributes its highest-scoring one; one with none gets
    class_id "" and score 0.
    """
    count = len(msg.detections)
    boxes = np.empty((count, 4), dtype=np.float64)
    scores = np.zeros(count, dtype=np.float32)
    class_ids: list[str] = []
    ids: list[str] = []
    for index, detection in enumerate(msg.detections):
        center = detection.bbox.center.position
        half_w, half_h = detection.bbox.size_x / 2, detection.bbox.size_y / 2
        boxes[index] = (center.x - half_w, center.y - half_h, center.x + half_w, center.y + half_h)
        best = max(detection.results, key=lambda result: result.hypothesis.score, default=None)
        if best is None:
            class_ids.append("")
        else:
            class_ids.append(best.hypothesis.class_id)
            scores[index] = best.hypothesis.score
        ids.append(detection.id)
    return boxes.astype(np.float32), scores, class_ids, ids


def label_info_msg(
    header_msg: Any, class_names: Sequence[str], threshold: float = 0.0, types: MessageTypes | None = None
) -> Any:
    """vision_msgs/msg/LabelInfo: class_map[i] = VisionClass(class_id=i, class_name=class_names[i])."""
    if len(class_names) > 65535:
        raise LeanEyeError(f"class_names: {len(class_names)} classes do not fit uint16 class ids")
    types = types or bag_types()
    vision_class = types.get("vision_msgs/msg/VisionClass")
    class_map = [vision_class(class_id=index, class_name=str(name)) for index, name in enumerate(class_names)]
    return types.get(LABEL_INFO)(header=header_msg, class_map=class_map, threshold=float(threshold))


def class_names_from_label_info(msg: Any) -> dict[int, str]:
    return {int(entry.class_id): entry.class_name for entry in msg.class_map}


def frame_latency_msg(header_msg: Any, latency: FrameLatency, types: MessageTypes | None = None) -> Any:
    """leaneye_msgs/msg/FrameLatency; `header_msg` is the image's header."""
    return (types or bag_types()).get(FRAME_LATENCY)(
        header=header_msg,
        decode_ms=float(latency.decode_ms),
        preprocess_ms=float(latency.preprocess_ms),
        inference_ms=float(latency.inference_ms),
        postprocess_ms=float(latency.postprocess_ms),
        total_ms=float(latency.total_ms),
        num_detections=int(latency.num_detections),
        receipt_to_publish_ms=float(latency.receipt_to_publish_ms),
        age_ms=float(latency.age_ms),
        frames_dropped=int(latency.frames_dropped),
    )


def frame_latency_from_msg(msg: Any) -> FrameLatency:
    return FrameLatency(
        decode_ms=float(msg.decode_ms),
        preprocess_ms=float(msg.preprocess_ms),
        inference_ms=float(msg.inference_ms),
        postprocess_ms=float(msg.postprocess_ms),
        total_ms=float(msg.total_ms),
        num_detections=int(msg.num_detections),
        receipt_to_publish_ms=float(msg.receipt_to_publish_ms),
        age_ms=float(msg.age_ms),
        frames_dropped=int(msg.frames_dropped),
    )


DIAGNOSTIC_LEVELS = ("OK", "WARN", "ERROR", "STALE")


def diagnostic_array_msg(
    header_msg: Any,
    name: str,
    hardware_id: str,
    level: str,
    message: str,
    values: dict[str, str],
    types: MessageTypes | None = None,
) -> Any:
    """diagnostic_msgs/msg/DiagnosticArray holding one DiagnosticStatus; `level` is a name of
    DIAGNOSTIC_LEVELS, read from the class's own constant (a byte in rclpy, an int in rosbags)."""
    if level not in DIAGNOSTIC_LEVELS:
        raise LeanEyeError(f"level: expected one of {', '.join(DIAGNOSTIC_LEVELS)}, got '{level}'")
    types = types or bag_types()
    status_cls, key_value = types.get("diagnostic_msgs/msg/DiagnosticStatus"), types.get("diagnostic_msgs/msg/KeyValue")
    status = status_cls(
        level=getattr(status_cls, level),
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[key_value(key=str(key), value=str(value)) for key, value in values.items()],
    )
    return types.get("diagnostic_msgs/msg/DiagnosticArray")(header=header_msg, status=[status])


def diagnostic_values(msg: Any) -> dict[str, str]:
    """key -> value of a DiagnosticArray's first status."""
    return {entry.key: entry.value for entry in msg.status[0].values}


def clock_msg(stamp_ns: int, types: MessageTypes | None = None) -> Any:
    """rosgraph_msgs/msg/Clock: what /clock carries for nodes with use_sim_time."""
    types = types or bag_types()
    stamp = header(stamp_ns, "", types).stamp
    return types.get("rosgraph_msgs/msg/Clock")(clock=stamp)
