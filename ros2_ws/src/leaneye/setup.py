"""ament_python package `leaneye`; installs the same way with `colcon build` and with `pip install`."""

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
    ],
    python_requires=">=3.10",
    # Ranges, not pins: the vehicle takes what its ROS distro ships (Humble: NumPy 1.21, OpenCV 4.5).
    # The project's own pins live in constraints.txt at the repository root.
    install_requires=["numpy>=1.21", "opencv-python-headless>=4.5", "tqdm>=4.60"],
    extras_require={
        "bags": ["rosbags>=0.11", "ruamel.yaml>=0.17", "mcap>=1.1", "mcap-ros2-support>=0.5"],
        "onnxruntime": ["onnxruntime>=1.16"],
        "eval": ["pycocotools>=2.0.6"],
    },
    zip_safe=True,
    entry_points={"console_scripts": ["leaneye = leaneye.cli:main"]},
)
