"""Start the LeanEye detector node (`leaneye`, a lifecycle node) with its parameters file.

    ros2 launch leaneye detector.launch.py engine:=engines/default
    ros2 launch leaneye detector.launch.py engine:=engines/default image_topic:=/carla/ego_vehicle/rgb_front/image
    ros2 launch leaneye detector.launch.py engine:=engines/default autostart:=false   # for a lifecycle manager
    ros2 launch leaneye detector.launch.py engine:=engines/yolox_trt device:=cuda:0   # a TensorRT engine, first GPU

Parameters come from params_file (default: share/leaneye/config/detector.yaml, every parameter with
its default); engine, image_topic, input_type, device and autostart override it when given (empty: the
file's value). use_sim_time is passed as given. With autostart:=false the node waits unconfigured
for `ros2 lifecycle set /leaneye configure` and `… activate` (or a lifecycle manager). Topics:
/<namespace>/leaneye/detections, …/label_info, …/latency, …/debug_image. Docs: docs/ros.md,
docs/ros-simulation.md.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

ARGUMENTS = (
    ("engine", "", "engine directory (model + manifest.json); empty: params_file's engine_dir"),
    ("image_topic", "", "sensor_msgs/Image topic (CompressedImage: <topic>/compressed); empty: params_file's"),
    ("input_type", "", "image, compressed or auto; empty: params_file's"),
    ("device", "", "where the backend runs: cpu, cuda:0, ...; empty: params_file's"),
    ("params_file", "", "detector parameters YAML; empty: share/leaneye/config/detector.yaml"),
    ("namespace", "", "namespace of the node (its topics become /<namespace>/leaneye/...)"),
    ("use_sim_time", "false", "true: the node's clock follows /clock"),
    (
        "autostart",
        "",
        "true: configure and activate at start; false: wait for a lifecycle manager; empty: params_file's",
    ),
)
# Launch argument -> detector parameter it overrides when not empty.
OVERRIDDEN = {
    "engine": "engine_dir",
    "image_topic": "image_topic",
    "input_type": "input_type",
    "device": "device",
    "autostart": "autostart",
}
BOOLEANS = {"true": True, "false": False}


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_detector)])


def _boolean(name: str, text: str) -> bool:
    value = BOOLEANS.get(text.lower())
    if value is None:
        raise ValueError(f"{name}: expected true or false, got '{text}'")
    return value


def _detector(context) -> list:
    args = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    params_file = args["params_file"] or str(Path(get_package_share_directory("leaneye")) / "config" / "detector.yaml")
    if not Path(params_file).is_file():
        raise ValueError(f"params_file: {params_file} is not a file (expected the detector's parameters YAML)")
    # Typed here rather than left to launch's YAML parsing of strings, which would turn engine:=123 into an int.
    overrides = {parameter: args[name] for name, parameter in OVERRIDDEN.items() if args[name]}
    if "autostart" in overrides:
        overrides["autostart"] = _boolean("autostart", overrides["autostart"])
    overrides["use_sim_time"] = _boolean("use_sim_time", args["use_sim_time"])
    return [
        Node(
            package="leaneye",
            executable="detector_node",
            name="leaneye",
            namespace=args["namespace"],
            output="screen",
            parameters=[params_file, overrides],
        )
    ]
