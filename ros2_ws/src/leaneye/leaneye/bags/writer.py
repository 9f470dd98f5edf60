"""Writing rosbag2 bags that Humble's rosbag2 opens (metadata version 8), as a folder or one
.mcap/.db3 file, renamed into place only when closed without error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer

from .. import msgs
from ..atomic import atomic_path
from ..errors import LeanEyeError

# Humble's rosbag2 reads metadata version 8; version 9 stores QoS profiles in a form it cannot parse.

# Humble's rosbag2 reads metadata version 8; version 9 stores QoS profiles in a form it cannot parse.
BAG_VERSION = 8
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
_SUFFIX_OF = {storage: suffix for suffix, storage in STORAGE_SUFFIXES.items()}

# What a default rclcpp publisher offers (keep last 10, reliable, volatile); `ros2 bag play`
# republishes with it, and both reliable and best-effort subscribers accept it.
_ZERO = QosTime(sec=0, nsec=0)
DEFAULT_QOS = Qos(
    history=QosHistory.KEEP_LAST,
    depth=10,
    reliability=QosReliability.RELIABLE,
    durability=QosDurability.VOLATILE,
    deadline=_ZERO,
    lifespan=_ZERO,
    liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=_ZERO,
    avoid_ros_namespace_conventions=False,
)


class BagWriter:
    """Topics are added once with their type; messages are written with their log time."""

    def __init__(self, writer: Writer, path: Path):
        self._writer = writer
        self._path = path
        self._store = msgs.typestore()
        self._connections: dict[str, Any] = {}

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._connections:
            raise LeanEyeError(f"{self._path}: topic {topic} was already added")
        if msgtype not in self._store.fielddefs:
            raise LeanEyeError(f"{self._path}: topic {topic}: unknown message type {msgtype}")
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self._store, offered_qos_profiles=[DEFAULT_QOS]
        )

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Write `msg` on `topic` with log (receive) time `stamp_ns`, nanoseconds since the epoch."""
        connection = self._connections.get(topic)
        if connection is None:
            raise LeanEyeError(
                f"{self._path}: topic {topic} was not added; added: {', '.join(self._connections) or 'none'}"
            )
        if msg.__msgtype__ != connection.msgtype:
            raise LeanEyeError(f"{self._path}: topic {topic} carries {connection.msgtype}, not {msg.__msgtype__}")
        self._writer.write(connection, int(stamp_ns), self._store.serialize_cdr(msg, connection.msgtype))


def output_storage(path: Path | str, storage: str | None = None) -> str:
    """The storage a bag written to `path` uses: `storage`, else the one its suffix names, else mcap."""
    path = Path(path)
    by_suffix = STORAGE_SUFFIXES.get(path.suffix)
    if storage is None:
        return by_suffix or "mcap"
    if storage not in STORAGES:
        raise LeanEyeError(f"storage: expected one of {', '.join(STORAGES)}, got '{storage}'")
    if by_suffix is not None and by_suffix != storage:
        raise LeanEyeError(
            f"{path}: a {path.suffix} file holds {by_suffix} storage, not {storage}; "
            f"name it {path.stem}{_SUFFIX_OF[storage]} or drop the suffix for a bag folder"
        )
    return storage


@contextlib.contextmanager
def open_bag_writer(path: Path | str, storage: str | None = None, force: bool = False) -> Iterator[BagWriter]:
    """A rosbag2 bag at `path`, in place only once the block exits without exception.

    `path` is a bag folder (metadata.yaml beside one storage file), or, when it ends in .mcap or
    .db3, that storage file alone (an MCAP file carries its schemas, channels and summary itself,
    so MCAP tools read it without metadata.yaml). `storage` defaults to the suffix's
    (`output_storage`).
    """
    path = Path(path)
    storage = output_storage(path, storage)
    single_file = path.suffix in STORAGE_SUFFIXES
    with atomic_path(path, force=force) as tmp:
        folder = tmp.with_name(tmp.stem) if single_file else tmp
        writer = Writer(folder, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        writer.open()
        try:
            yield BagWriter(writer, path)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if single_file:
            [file] = [file for file in folder.iterdir() if file.suffix == path.suffix]
            file.replace(tmp)
