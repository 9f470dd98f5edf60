# Placeholder until the ROS 2 nodes land (the ROS issue). It already does what the final image
# will do first: build the `leaneye` ament_python package in a ROS 2 Jazzy workspace, with its
# dependencies taken from package.xml through rosdep (Ubuntu's NumPy and OpenCV, as on a vehicle).
# To come with the ROS issue: the launch files in launch/, an engine directory mounted at run time
# (engines/ is git-ignored: engines are built per device), and a CMD that launches the detector.
#
#   docker build -t leaneye .
#   docker run --rm leaneye
FROM ros:jazzy-ros-base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /ws

COPY ros2_ws/src ./src

# rosdep resolves package.xml's <exec_depend> keys (python3-numpy, python3-opencv) to apt packages.
RUN apt-get update \
 && rosdep update --rosdistro "$ROS_DISTRO" \
 && rosdep install --from-paths src --ignore-src --rosdistro "$ROS_DISTRO" -y \
 && rm -rf /var/lib/apt/lists/*

RUN source "/opt/ros/$ROS_DISTRO/setup.bash" \
 && colcon build --event-handlers console_direct+

# The base image's entrypoint sources ROS itself; the command adds the workspace overlay.
CMD ["bash", "-lc", "source /ws/install/setup.bash && ros2 run leaneye leaneye --help"]
