"""LeanEye on the vehicle: a ROS-free detection runtime core, and the ROS 2 nodes around it.

Nothing imported here needs ROS, PyTorch or a GPU; heavy dependencies are imported lazily
inside the functions that need them.
"""

__version__ = "0.1.0"
