"""rosbag2 bags (MCAP and sqlite3 storage) without ROS, on top of the `rosbags` library."""

from .images import COMPRESSED_SUFFIX, IMAGE_TYPES, FrameError, ImageFrame, find_image_topic, iter_images
from .reader import BagInfo, BagReader, TopicInfo, bag_info, open_bag_reader
from .writer import BAG_VERSION, DEFAULT_QOS, STORAGE_SUFFIXES, STORAGES, BagWriter, open_bag_writer, output_storage

__all__ = [
    "BAG_VERSION",
    "BagInfo",
    "BagReader",
    "BagWriter",
    "COMPRESSED_SUFFIX",
    "DEFAULT_QOS",
    "FrameError",
    "IMAGE_TYPES",
    "ImageFrame",
    "STORAGES",
    "STORAGE_SUFFIXES",
    "TopicInfo",
    "bag_info",
    "find_image_topic",
    "iter_images",
    "open_bag_reader",
    "open_bag_writer",
    "output_storage",
]
