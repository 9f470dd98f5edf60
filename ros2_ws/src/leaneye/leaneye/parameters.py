"""The detector node's parameters, defined once: type, default, range or choices, whether a live
change is supported, and what each means. `leaneye.ros.detector_node` turns them into ROS 2
parameter descriptors and runs `check` in its parameter callback; launch files, config/detector.yaml
and docs/ros.md name the same parameters. ROS-free, so they are tested without a graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .pipeline import CLASS_ID_MODES

INPUT_TYPES = ("image", "compressed", "auto")
QOS_RELIABILITY = ("best_effort", "reliable")


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any  # its Python type is the parameter's type; a tuple is a string array
    description: str
    live: bool = False  # may change while the node runs; otherwise read-only once declared
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None:
            return f"a number in [{self.low:g}, {self.high:g}]"
        return ""

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable for this parameter, or None when it is."""
        expected = type(self.default)
        if expected is tuple:
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                return f"{self.name}: expected a list of strings, got {value!r}"
            return None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            return f"{self.name}: expected a {expected.__name__}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name}: expected {self.range_text}, got {value!r}"
        if self.low is not None and not (
            (not isinstance(value, float) or math.isfinite(value)) and self.low <= value <= self.high
        ):
            return f"{self.name}: expected {self.range_text}, got {value!r}"
        return None


DETECTOR_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("engine_dir", "", "engine directory (model + manifest.json); loaded and checked at configure"),
    ParameterSpec(
        "image_topic",
        "/camera/image_raw",
        "sensor_msgs/Image topic; CompressedImage is read from <image_topic>/compressed",
    ),
    ParameterSpec(
        "input_type",
        "auto",
        "image: sensor_msgs/Image on image_topic; compressed: sensor_msgs/CompressedImage on <image_topic>/compressed "
        "(image_transport's name); auto: whichever the graph offers, Image first",
        choices=INPUT_TYPES,
    ),
    ParameterSpec("conf_threshold", 0.25, "score threshold of published detections", live=True, low=0.0, high=1.0),
    ParameterSpec("iou_threshold", 0.45, "NMS IoU threshold", live=True, low=0.0, high=1.0),
    ParameterSpec("max_detections", 300, "at most this many detections per frame", live=True, low=1, high=10000),
    ParameterSpec("classes", (), "publish only these class names (empty: every class of the engine)", live=True),
    ParameterSpec(
        "class_id",
        "index",
        "hypothesis.class_id: the class index as a string (index) or the class name (name)",
        live=True,
        choices=CLASS_ID_MODES,
    ),
    ParameterSpec(
        "qos_reliability",
        "best_effort",
        "image subscription reliability: best_effort (the sensor-data profile) or reliable (lossless replay)",
        choices=QOS_RELIABILITY,
    ),
    ParameterSpec("qos_depth", 1, "image subscription queue depth", low=1, high=100),
    ParameterSpec("num_threads", 0, "inference threads (0: the backend's default)", low=0, high=1024),
    ParameterSpec("device", "", "where the backend runs: cpu, cuda:0, ... (empty: the backend's first device)"),
    ParameterSpec(
        "backend_options", (), "backend-specific options as KEY=VALUE, e.g. cuda_graph=true (docs/backends.md)"
    ),
    ParameterSpec(
        "publish_debug_image", True, "offer ~/debug_image (annotated frames, built only while someone subscribes)"
    ),
    ParameterSpec("autostart", True, "configure and activate at start; false: wait for a lifecycle manager"),
)

PARAMETERS_BY_NAME = {spec.name: spec for spec in DETECTOR_PARAMETERS}


def first_problem(specs: Sequence[ParameterSpec], values: Mapping[str, Any]) -> str | None:
    """The first reason one of `values` (every spec's name -> value) does not fit its spec, or None."""
    for spec in specs:
        problem = spec.check(values[spec.name])
        if problem is not None:
            return problem
    return None


def check_parameters(values: dict[str, Any], class_names: Sequence[str] | None = None) -> str | None:
    """The first reason any of the detector node's `values` (some names -> values) is not acceptable, or
    None. With the engine's `class_names`, `classes` must name classes it has."""
    unknown = [name for name in values if name not in PARAMETERS_BY_NAME]
    if unknown:
        return f"{unknown[0]}: not a parameter of the detector node"
    problem = first_problem([PARAMETERS_BY_NAME[name] for name in values], values)
    if problem is not None:
        return problem
    if class_names is not None and values.get("classes"):
        unknown = [name for name in values["classes"] if name not in class_names]
        if unknown:
            return f"classes: {', '.join(unknown)} not among the engine's classes ({', '.join(class_names)})"
    if "engine_dir" in values and not values["engine_dir"]:
        return "engine_dir: expected an engine directory (model + manifest.json), got an empty string"
    return None
