"""Where message classes come from: the conversions in `leaneye.msgs` build whichever classes a
`MessageTypes` provider hands them, always with keyword arguments for every field (rosbags'
dataclasses require all of them; rclpy's generated classes accept them).

    RosbagsTypes(msgs.typestore())  bags: rosbags' typestore (what `leaneye.msgs` uses by default)
    GeneratedTypes()                 a live ROS 2 graph: the rosidl-generated classes of `<pkg>.msg`

GeneratedTypes imports the generated message modules only, never rclpy itself (only
`leaneye.ros` may), so it works wherever the message packages are importable.
"""

from __future__ import annotations

import array
import importlib
from typing import Any, Protocol

import numpy as np

from ..errors import LeanEyeError


class MessageTypes(Protocol):
    def get(self, msgtype: str) -> Any:
        """The class of a full type name, e.g. "vision_msgs/msg/Detection2DArray"."""

    def uint8_array(self, data: np.ndarray) -> Any:
        """A uint8[] field's value from a flat uint8 array, in the form the classes take fastest."""


class RosbagsTypes:
    """Classes of a rosbags Typestore; uint8[] fields hold NumPy arrays."""

    def __init__(self, store: Any):
        self.store = store

    def get(self, msgtype: str) -> Any:
        try:
            return self.store.types[msgtype]
        except KeyError:
            raise LeanEyeError(f"message type {msgtype}: not in the rosbags typestore") from None

    def uint8_array(self, data: np.ndarray) -> np.ndarray:
        return data


class GeneratedTypes:
    """rosidl-generated Python classes, imported from `<pkg>.msg`; uint8[] fields hold array('B')."""

    def __init__(self) -> None:
        self._classes: dict[str, Any] = {}

    def get(self, msgtype: str) -> Any:
        cls = self._classes.get(msgtype)
        if cls is not None:
            return cls
        package, kind, name = _split(msgtype)
        try:
            module = importlib.import_module(f"{package}.{kind}")
        except ImportError as exc:
            raise LeanEyeError(
                f"message type {msgtype}: cannot import {package}.{kind} ({exc}); is the package built and its "
                f"workspace sourced?"
            ) from None
        cls = getattr(module, name, None)
        if cls is None:
            raise LeanEyeError(f"message type {msgtype}: {package}.{kind} has no {name}")
        self._classes[msgtype] = cls
        return cls

    def uint8_array(self, data: np.ndarray) -> array.array:
        # The generated setter takes array('B') as it is; any other sequence it checks element by element.
        return array.array("B", data.tobytes())


def _split(msgtype: str) -> tuple[str, str, str]:
    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        raise LeanEyeError(f"message type {msgtype}: expected package/msg/Name")
    return parts[0], parts[1], parts[2]
