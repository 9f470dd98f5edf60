"""ament_python package `leaneye`; installs the same way with `colcon build` and with `pip install`.

The launch files live in the repository's top-level launch/ (reached through the `launch` link in
this folder) and are installed into share/leaneye/launch, so `ros2 launch leaneye detector.launch.py`
finds them; config/ goes to share/leaneye/config. The nodes' console scripts go to lib/leaneye
(setup.cfg), where `ros2 run` and launch's Node(package="leaneye", executable=...) look.
"""

from glob import glob

from setuptools import find_packages, setup

setup(
    name="leaneye",
    version="0.1.0",
    description="LeanEye runtime: ROS-free detection core and ROS 2 nodes",
    packages=find_packages(include=["leaneye", "leaneye.*"]),
    package_data={"leaneye.msgs": ["definitions/*.msg"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/leaneye"]),
        ("share/leaneye", ["package.xml"]),
        ("share/leaneye/launch", sorted(glob("launch/*.launch.py"))),
        ("share/leaneye/config", sorted(glob("config/*.yaml") + glob("config/*.xml"))),
    ],
    python_requires=">=3.10",
    # Ranges, not pins: the vehicle takes what its ROS distro ships (Humble: NumPy 1.21, OpenCV 4.5).
    # The project's own pins live in constraints.txt at the repository root.
    install_requires=["numpy>=1.21", "opencv-python-headless>=4.5", "tqdm>=4.60"],
    extras_require={
        "bags": ["rosbags>=0.11", "ruamel.yaml>=0.17", "mcap>=1.1", "mcap-ros2-support>=0.5"],
        "onnxruntime": ["onnxruntime>=1.16"],
        "eval": ["pycocotools>=2.0.6"],
        # The TensorRT backend's buffers and stream; TensorRT itself comes with JetPack or NVIDIA's
        # wheels. 12.x runs on CUDA 12 and 13 drivers; 13.x needs CUDA 13 (not JetPack 6).
        "tensorrt": ["cuda-bindings>=12.9,<13"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "leaneye = leaneye.cli:main",
            "detector_node = leaneye.ros.detector_node:main",
            "sim_camera_node = leaneye.ros.sim_camera_node:main",
            "bag_player_node = leaneye.ros.bag_player_node:main",
            "bag_recorder_node = leaneye.ros.bag_recorder_node:main",
        ]
    },
)
