"""What the LeanEye nodes share: parameters declared from `leaneye.parameters.ParameterSpec`s (so each
is defined once, ROS-free, with its range and description), and running a node that ends by itself
(bag player, recorder, a camera with `frames`) to a process exit code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter

from ..parameters import ParameterSpec

_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    tuple: ParameterType.PARAMETER_STRING_ARRAY,
}


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The ROS 2 descriptor of a spec: type, range, read-only unless live, description."""
    text = spec.description + (f" ({spec.range_text})" if spec.range_text else "")
    extra: dict[str, Any] = {}
    if isinstance(spec.default, float) and spec.low is not None:
        extra["floating_point_range"] = [FloatingPointRange(from_value=spec.low, to_value=spec.high, step=0.0)]
    elif isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.low is not None:
        extra["integer_range"] = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return ParameterDescriptor(
        name=spec.name, type=_ROS_TYPES[type(spec.default)], description=text, read_only=not spec.live, **extra
    )


def declare_parameters(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Declare each spec with its descriptor; their values (overrides applied) by name."""
    for spec in specs:
        # An empty string array can only be declared by its type (rclpy cannot infer it from []).
        default = Parameter.Type.STRING_ARRAY if spec.default == () else spec.default
        node.declare_parameter(spec.name, default, descriptor(spec))
    return {spec.name: parameter_value(node, spec) for spec in specs}


def parameter_value(node: Node, spec: ParameterSpec) -> Any:
    """The value of a declared spec; a string array as a tuple (an empty one reads as uninitialised)."""
    value = node.get_parameter_or(spec.name, Parameter(spec.name, value=None)).value
    return tuple(value or ()) if isinstance(spec.default, tuple) else value


def spin_until_shutdown(make_node: Callable[[], Any], args: list[str] | None = None) -> None:
    """Spin the node `make_node()` makes until Ctrl-C or an external shutdown (a node that never ends
    by itself: the detector)."""
    rclpy.init(args=args)
    node = make_node()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def run_to_completion(make_node: Callable[[], Any], name: str, args: list[str] | None) -> int:
    """Create the node (a bad parameter override: one line, 1), `run()` it and return its exit code;
    on Ctrl-C or an external shutdown, `interrupted()`'s."""
    rclpy.init(args=args)
    try:
        node = make_node()
    except ParameterException as exc:
        rclpy.logging.get_logger(name).error(f"parameter {exc}")
        rclpy.try_shutdown()
        return 1
    try:
        return node.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        return node.interrupted()
    except Exception:
        # Ctrl-C shuts the context down, possibly while a publisher is in use: rclpy then raises its
        # own error ("publisher's context is invalid") rather than the shutdown exception.
        if node.context.ok():
            raise
        return node.interrupted()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
