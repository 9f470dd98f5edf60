# The vehicle side in one image: ROS 2, the leaneye and leaneye_msgs packages built by colcon, and
# a CMD that launches the detector on an engine directory mounted at run time (engines are built
# per device and git-ignored). No PyTorch, no leaneye_compress. Build and run commands for each
# base (x86 CPU, x86 + TensorRT, Jetson): docs/docker.md.
#
#   docker build -t leaneye .
#   docker run --rm --net=host --ipc=host -v "$PWD/engines/default:/engine:ro" leaneye
#
# BASE_IMAGE selects the base; ROS_DISTRO must match its Ubuntu (jammy: humble, noble: jazzy).
# A base without ROS 2 (nvcr.io/nvidia/tensorrt, nvcr.io/nvidia/l4t-jetpack) gets ros-core from
# the ROS apt repository; the rest comes from package.xml through rosdep, and pip adds what rosdep
# has no key for (onnxruntime, onnx, rosbags).
ARG BASE_IMAGE=ros:jazzy-ros-base

# --- runtime: the base, ROS 2, and everything the nodes need at run time -----------------------
FROM ${BASE_IMAGE} AS runtime
ARG ROS_DISTRO=jazzy
# The ROS apt source package the official ros images install, with its checksums per Ubuntu release.
ARG ROS_APT_SOURCE_VERSION=1.2.0
ARG ROS_APT_SOURCE_SHA256_JAMMY=767884cf4ed03116b9d64438930a832ed854147ae435279a7924dfdf60f94433
ARG ROS_APT_SOURCE_SHA256_NOBLE=0804d9b13db770eb87019be414cd78378835228ad5fa801fc88758596dd8f7e5
ARG DEBIAN_FRONTEND=noninteractive
ENV ROS_DISTRO=${ROS_DISTRO} LANG=C.UTF-8 LC_ALL=C.UTF-8 PYTHONUNBUFFERED=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions come from the distro's repositories, as rosdep would install them on a vehicle.
# hadolint ignore=DL3008
RUN if [ ! -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then \
      codename="$(. /etc/os-release && echo "$VERSION_CODENAME")" \
      && case "$ROS_DISTRO:$codename" in \
           humble:jammy) sha256="$ROS_APT_SOURCE_SHA256_JAMMY" ;; \
           jazzy:noble) sha256="$ROS_APT_SOURCE_SHA256_NOBLE" ;; \
           *) echo "ROS_DISTRO=$ROS_DISTRO on Ubuntu $codename: expected humble on jammy (22.04) or jazzy on noble (24.04); pass --build-arg ROS_DISTRO=..." >&2; exit 1 ;; \
         esac \
      && apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates curl \
      && curl -fsSL -o /tmp/ros2-apt-source.deb \
           "https://github.com/ros-infrastructure/ros-apt-source/releases/download/${ROS_APT_SOURCE_VERSION}/ros2-apt-source_${ROS_APT_SOURCE_VERSION}.${codename}_all.deb" \
      && echo "$sha256 */tmp/ros2-apt-source.deb" | sha256sum --strict --check \
      && apt-get install -y --no-install-recommends /tmp/ros2-apt-source.deb \
      && rm /tmp/ros2-apt-source.deb \
      && apt-get update \
      && apt-get install -y --no-install-recommends "ros-$ROS_DISTRO-ros-core"; \
    fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3-pip python3-rosdep \
 && rm -rf /var/lib/apt/lists/* \
 && if [ ! -f /etc/ros/rosdep/sources.list.d/20-default.list ]; then rosdep init; fi \
 && rosdep update --rosdistro "$ROS_DISTRO"

# Only the manifests first, so that editing sources does not reinstall the dependencies.
WORKDIR /ws
COPY ros2_ws/src/leaneye/package.xml ros2_ws/src/leaneye/package.xml
COPY ros2_ws/src/leaneye_msgs/package.xml ros2_ws/src/leaneye_msgs/package.xml

# Run-time keys of package.xml: rclpy, vision_msgs (ros-$ROS_DISTRO-vision-msgs), python3-opencv...
RUN apt-get update \
 && rosdep install --from-paths ros2_ws/src --ignore-src --rosdistro "$ROS_DISTRO" -y --dependency-types exec \
 && rm -rf /var/lib/apt/lists/*

# pip, for what rosdep has no key for. The pins are constraints.txt's NumPy-1 set (its `# numpy1:`
# lines replacing the main pins, as the Makefile builds .venv-numpy1's): the vehicle half's tested
# versions beside a ROS distro's NumPy 1.x. A distro package that already satisfies them (Jazzy's
# NumPy 1.26.4) stays; an older one (Humble's NumPy 1.21) gets the pinned version beside it.
# A base with TensorRT (libnvinfer) also gets cuda-bindings, the TensorRT backend's buffers and stream.
COPY constraints.txt constraints-numpy1.awk /tmp/
RUN awk -f /tmp/constraints-numpy1.awk /tmp/constraints.txt /tmp/constraints.txt > /tmp/pins.txt \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -c /tmp/pins.txt onnxruntime onnx rosbags \
 && if ldconfig -p | grep -q libnvinfer; then \
      PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -c /tmp/pins.txt cuda-bindings; \
    fi \
 && rm /tmp/constraints.txt /tmp/constraints-numpy1.awk /tmp/pins.txt

# --- build: compilers, colcon and the build keys; only its install/ goes into the image ------------
FROM runtime AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3-colcon-common-extensions \
 && rosdep install --from-paths ros2_ws/src --ignore-src --rosdistro "$ROS_DISTRO" -y \
      --dependency-types build --dependency-types buildtool --dependency-types build_export \
 && rm -rf /var/lib/apt/lists/*

# ros2_ws/src/leaneye/launch is a link to ../../../launch: the same layout here keeps it whole.
COPY launch launch
COPY ros2_ws/src ros2_ws/src
RUN source "/opt/ros/$ROS_DISTRO/setup.bash" \
 && colcon build --base-paths ros2_ws/src --build-base /tmp/colcon-build --install-base /ws/install \
      --event-handlers console_cohesion+ \
 && rm -rf /tmp/colcon-build log

# --- the image ---------------------------------------------------------------------------------
FROM runtime
COPY --from=build /ws/install /ws/install
# /ws/install/setup.bash also sources the ROS underlay it was built on; sourcing both says so.
ENTRYPOINT ["/bin/bash", "-c", "source \"/opt/ros/$ROS_DISTRO/setup.bash\" && source /ws/install/setup.bash && exec \"$@\"", "leaneye"]
CMD ["ros2", "launch", "leaneye", "detector.launch.py", "engine:=/engine"]
