"""The ROS 2 nodes around the ROS-free core: the only place `rclpy` is imported. Each module is one
node with its `main` (console scripts detector_node, sim_camera_node, bag_player_node,
bag_recorder_node); all per-frame logic lives in the core (leaneye.pipeline, leaneye.msgs, ...)."""
