"""Replay a bag through the detector on a ROS 2 graph and summarise it as `leaneye replay` does.

    ros2 launch leaneye replay.launch.py bag:=runs/scenes/bag engine:=engines/default out:=runs/replayed.mcap
    ros2 launch leaneye replay.launch.py bag:=drive.mcap engine:=engines/default mode:=realtime rate:=2.0
    ros2 launch leaneye replay.launch.py bag:=drive_bag engine:=engines/default player:=ros2bag out:=recorded

player:=leaneye (default) runs bag_player_node (mode closed_loop: each frame waits for its detections;
realtime: recorded spacing / rate), detector_node (use_sim_time, reliable image QoS) and
bag_recorder_node, which prints the summary, writes `out` (and the JSON `report`) and exits; that
ends the launch. A player that fails (missing or corrupt bag: one log line) also ends it, and the
recorder then writes nothing.

player:=ros2bag uses `ros2 bag play --clock 200` (its default 40 Hz clock would quantise the frame age
to 25 ms) and, with out:=, `ros2 bag record -o OUT` of the same topics instead: realtime only, no
summary; the launch ends `ros2bag_grace_s` after the playback. rosbag2 is not installed where this
project is tested, so that branch is untested. Docs: docs/ros-replay.md.
"""

from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
    TimerAction,
)
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

COMPRESSED_SUFFIX = "/compressed"  # image_transport's name of a CompressedImage topic
# The topics a replay records: the detector's and the ground truth a scene bag carries.
RECORDED_TOPICS = (
    "/leaneye/detections",
    "/leaneye/latency",
    "/leaneye/label_info",
    "/ground_truth/detections",
    "/ground_truth/ignore_regions",
    "/ground_truth/label_info",
)

ARGUMENTS = (
    ("bag", None, "the bag to replay: a rosbag2 folder, or a single .mcap / .db3 file"),
    ("engine", None, "engine directory for the detector (model + manifest.json)"),
    ("mode", "closed_loop", "closed_loop (each frame waits for its detections; player:=leaneye only) or realtime"),
    ("rate", "1.0", "realtime: the recorded rate times this"),
    ("image_topic", "/camera/image_raw", "the bag's camera topic (sensor_msgs/CompressedImage: <topic>/compressed)"),
    ("out", "", "output bag of detections, latency and ground truth (empty: none)"),
    ("report", "", "JSON summary (player:=leaneye; empty: none)"),
    ("player", "leaneye", "leaneye (bag_player_node + bag_recorder_node) or ros2bag (ros2 bag play / record)"),
    ("ros2bag_delay_s", "5.0", "player:=ros2bag: seconds before playback starts (the detector loads its engine)"),
    ("ros2bag_grace_s", "2.0", "player:=ros2bag: seconds after playback before the launch ends"),
)


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, description=description, **({} if default is None else {"default_value": default}))
        for name, default, description in ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_replay)])


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got '{text}'") from None
    if not value > 0:
        raise ValueError(f"{name}: expected a positive number, got '{text}'")
    return value


def _replay(context) -> list:
    args = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    if args["player"] not in ("leaneye", "ros2bag"):
        raise ValueError(f"player: expected leaneye or ros2bag, got '{args['player']}'")
    if args["mode"] not in ("closed_loop", "realtime"):
        raise ValueError(f"mode: expected closed_loop or realtime, got '{args['mode']}'")
    rate = _number("rate", args["rate"])
    # The detector is told the input type rather than left to find it in the graph (input_type auto):
    # under use_sim_time its timers, which look again, stand still until the first /clock.
    compressed = args["image_topic"].endswith(COMPRESSED_SUFFIX)
    detector = Node(
        package="leaneye",
        executable="detector_node",
        output="screen",
        parameters=[
            {
                "engine_dir": args["engine"],
                "image_topic": args["image_topic"].removesuffix(COMPRESSED_SUFFIX),
                "input_type": "compressed" if compressed else "image",
                "qos_reliability": "reliable",  # a replay loses no frame in transport
                "use_sim_time": True,  # the frame age is measured against the recorded time (/clock)
            }
        ],
    )
    # Nothing can come back without the detector.
    actions = [detector, _shut_down_after(detector, "the detector exited")]
    if args["player"] == "leaneye":
        return actions + _leaneye_player(args, rate)
    return actions + _ros2bag_player(args, rate)


def _leaneye_player(args: dict, rate: float) -> list:
    player = Node(
        package="leaneye",
        executable="bag_player_node",
        output="screen",
        parameters=[
            {
                "bag": args["bag"],
                "image_topic": args["image_topic"],
                "mode": args["mode"],
                "rate": rate,
                "wait_for_recorder": True,
            }
        ],
    )
    recorder = Node(
        package="leaneye",
        executable="bag_recorder_node",
        output="screen",
        parameters=[{"out": args["out"], "report": args["report"]}],
    )

    def on_player_exit(event, context):
        # At the end of the bag the player exits 0 and the recorder finishes the job; on a failure
        # nothing more will come, and the recorder, interrupted, writes nothing.
        if event.returncode != 0:
            return [Shutdown(reason=f"the bag player failed (exit code {event.returncode})")]
        return None

    return [
        player,
        recorder,
        RegisterEventHandler(OnProcessExit(target_action=player, on_exit=on_player_exit)),
        _shut_down_after(recorder, "the recording is complete"),
    ]


def _ros2bag_player(args: dict, rate: float) -> list:
    if args["mode"] != "realtime":
        raise ValueError("mode: ros2 bag play plays in real time only; pass mode:=realtime with player:=ros2bag")
    if args["report"]:
        raise ValueError("report: only player:=leaneye writes a report (ros2 bag record prints no summary)")
    delay = _number("ros2bag_delay_s", args["ros2bag_delay_s"])
    grace = _number("ros2bag_grace_s", args["ros2bag_grace_s"])
    play = ExecuteProcess(
        cmd=["ros2", "bag", "play", args["bag"], "--clock", "200", "--rate", str(rate), "--delay", str(delay)],
        output="screen",
    )
    actions = [play]
    if args["out"]:
        actions.append(
            ExecuteProcess(cmd=["ros2", "bag", "record", "-o", args["out"], *RECORDED_TOPICS], output="screen")
        )
    # ros2 bag play exits at the end of the bag; the detections of the last frames still need a moment,
    # then Shutdown sends SIGINT, on which ros2 bag record closes its bag.
    actions.append(
        RegisterEventHandler(
            OnProcessExit(
                target_action=play,
                on_exit=[TimerAction(period=grace, actions=[Shutdown(reason="ros2 bag play finished")])],
            )
        )
    )
    return actions


def _shut_down_after(action, reason: str) -> RegisterEventHandler:
    return RegisterEventHandler(OnProcessExit(target_action=action, on_exit=[Shutdown(reason=reason)]))
