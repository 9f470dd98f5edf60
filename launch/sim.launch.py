"""The simulated camera and the detector: LeanEye on generated driving scenes, no camera or bag needed.

    ros2 launch leaneye sim.launch.py engine:=engines/default
    ros2 launch leaneye sim.launch.py engine:=engines/default rate:=5.0 seed:=7 publish_clock:=true
    ros2 launch leaneye sim.launch.py engine:=engines/default frames:=100 compressed:=true

sim_camera_node publishes the scenes of `seed` on image_topic (and ground truth on /ground_truth/*);
detector.launch.py's detector reads them (compressed:=true: the jpeg <image_topic>/compressed) and
publishes /leaneye/detections. The camera holds its first frame until the detector subscribes.
publish_clock:=true: the camera publishes /clock (1/rate per frame) and both nodes use sim time.
The launch ends when the camera exits: after `frames` frames (0: endless), or on Ctrl-C.
Docs: docs/ros-simulation.md.
"""

from pathlib import Path

from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

ARGUMENTS = (
    ("engine", None, "engine directory for the detector (model + manifest.json)"),
    ("rate", "10.0", "camera frames per second"),
    ("seed", "0", "scene sequence seed"),
    ("width", "1224", "image width in pixels"),
    ("height", "370", "image height in pixels"),
    ("frames", "0", "frames to publish before the launch ends (0: endless)"),
    ("publish_clock", "false", "true: the camera publishes /clock and both nodes use sim time"),
    (
        "compressed",
        "false",
        "true: the camera also publishes jpeg on <image_topic>/compressed and the detector reads it",
    ),
    ("image_topic", "/camera/image_raw", "the camera's sensor_msgs/Image topic"),
    ("params_file", "", "detector parameters YAML; empty: share/leaneye/config/detector.yaml"),
)
BOOLEANS = {"true": True, "false": False}


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, description=text, **({} if default is None else {"default_value": default}))
        for name, default, text in ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_simulation)])


def _typed(name: str, text: str, kind: type):
    """A launch argument as `kind` (bool: true or false), or one line saying what was expected."""
    try:
        if kind is bool:
            return BOOLEANS[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        expected = "true or false" if kind is bool else f"a {'number' if kind is float else 'whole number'}"
        raise ValueError(f"{name}: expected {expected}, got '{text}'") from None


def _simulation(context) -> list:
    args = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    publish_clock = _typed("publish_clock", args["publish_clock"], bool)
    compressed = _typed("compressed", args["compressed"], bool)
    camera = Node(
        package="leaneye",
        executable="sim_camera_node",
        name="sim_camera",
        output="screen",
        parameters=[
            {
                "seed": _typed("seed", args["seed"], int),
                "rate": _typed("rate", args["rate"], float),
                "width": _typed("width", args["width"], int),
                "height": _typed("height", args["height"], int),
                "frames": _typed("frames", args["frames"], int),
                "image_topic": args["image_topic"],
                "publish_compressed": compressed,
                "publish_clock": publish_clock,
                "use_sim_time": publish_clock,
                # Frames before the detector has loaded its engine would be lost to it.
                "wait_for_subscriber": True,
            }
        ],
    )
    detector = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(Path(__file__).with_name("detector.launch.py"))),
        launch_arguments={
            "engine": args["engine"],
            "image_topic": args["image_topic"],
            # Told, not found in the graph (input_type auto): under sim time the node's timers that look
            # again stand still until the first /clock, which waits for the node's subscription.
            "input_type": "compressed" if compressed else "image",
            "use_sim_time": str(publish_clock).lower(),
            "params_file": args["params_file"],
        }.items(),
    )
    return [
        camera,
        detector,
        RegisterEventHandler(OnProcessExit(target_action=camera, on_exit=[Shutdown(reason="the camera exited")])),
    ]
