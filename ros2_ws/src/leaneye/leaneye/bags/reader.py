"""Reading rosbag2 bags (folder, .mcap or .db3) without ROS.

Each storage file is read directly, because rosbags' folder reader matches the topics of
metadata.yaml to those of the storage file by their QoS profiles and silently yields nothing when
the two differ (they do in bags that rosbag2 itself wrote). Every complete pass over a topic is
checked against the count that metadata.yaml (or the file's own summary) promises.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from rosbags.interfaces import (
    MessageDefinitionFormat,
)
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .. import msgs
from ..errors import LeanEyeError
from .writer import STORAGE_SUFFIXES, STORAGES

# Humble's rosbag2 reads metadata version 8; version 9 stores QoS profiles in a form it cannot parse.


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    path: Path
    storage: str
    files: list[Path]
    size_bytes: int
    start_ns: int  # log time of the first message
    end_ns: int  # log time of the last message
    message_count: int
    topics: list[TopicInfo]
    counted: bool  # counts come from reading every message, not from the bag's summary

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def format_text(self) -> str:
        """The layout of `ros2 bag info`."""

        def when(ns: int) -> str:
            moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
            return f"{moment:%b %d %Y %H:%M:%S}.{ns // 1_000_000 % 1000:03d} UTC ({ns // 10**9}.{ns % 10**9:09d})"

        lines = [
            f"Files:             {', '.join(str(file.name) for file in self.files)}",
            f"Bag size:          {_human_size(self.size_bytes)}",
            f"Storage id:        {self.storage}",
            f"Duration:          {self.duration_ns // 10**9}.{self.duration_ns % 10**9:09d}s",
        ]
        if self.message_count:
            lines += [f"Start:             {when(self.start_ns)}", f"End:               {when(self.end_ns)}"]
        lines.append(f"Messages:          {self.message_count}" + (" (counted)" if self.counted else ""))
        width = max((len(topic.name) for topic in self.topics), default=0)
        type_width = max((len(topic.msgtype) for topic in self.topics), default=0)
        for index, topic in enumerate(self.topics):
            label = "Topic information: " if index == 0 else " " * 19
            lines.append(
                f"{label}Topic: {topic.name:<{width}} | Type: {topic.msgtype:<{type_width}} | "
                f"Count: {topic.count} | Serialization Format: cdr"
            )
        if not self.topics:
            lines.append("Topic information:")
        return "\n".join(lines)


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


class _Metadata(NamedTuple):
    storage: str
    files: list[Path]
    compressed: bool
    topics: dict[str, str]
    counts: dict[str, int]
    start_ns: int
    end_ns: int
    message_count: int


def _read_metadata(folder: Path) -> _Metadata:
    """What metadata.yaml promises: storage, files, topics with counts, time span."""
    yaml_path = folder / "metadata.yaml"
    try:
        document = YAML(typ="safe").load(yaml_path.read_text(encoding="utf-8"))
        info = document["rosbag2_bagfile_information"]
        storage = str(info["storage_identifier"])
        files = [folder / PurePath(name).name for name in info["relative_file_paths"]]
        topics: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for entry in info["topics_with_message_count"]:
            name = str(entry["topic_metadata"]["name"])
            topics.setdefault(name, str(entry["topic_metadata"]["type"]))
            counts[name] += int(entry["message_count"])
        message_count = int(info["message_count"])
        start_ns = int(info["starting_time"]["nanoseconds_since_epoch"])
        duration_ns = int(info["duration"]["nanoseconds"])
        compressed = bool(info.get("compression_mode")) and str(info["compression_mode"]).lower() != "none"
    except (OSError, UnicodeDecodeError) as exc:
        raise LeanEyeError(f"{yaml_path}: not readable ({exc})") from None
    except YAMLError as exc:
        raise LeanEyeError(f"{yaml_path}: not valid YAML ({_yaml_problem(exc)})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise LeanEyeError(f"{yaml_path}: not rosbag2 metadata (missing or malformed {exc})") from None
    if storage not in STORAGES:
        raise LeanEyeError(f"{yaml_path}: storage '{storage}' is not supported; expected one of {', '.join(STORAGES)}")
    if message_count != sum(counts.values()):
        raise LeanEyeError(
            f"{yaml_path}: message_count {message_count} disagrees with the sum of its topics' "
            f"counts, {sum(counts.values())}"
        )
    mismatched = [file.name for file in files if STORAGE_SUFFIXES.get(file.suffix, storage) != storage]
    if mismatched:
        raise LeanEyeError(
            f"{yaml_path}: storage_identifier is {storage}, but the bag's files are {', '.join(mismatched)}"
        )
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise LeanEyeError(f"{yaml_path}: lists storage files that are missing: {', '.join(missing)}")
    return _Metadata(storage, files, compressed, topics, dict(counts), start_ns, start_ns + duration_ns, message_count)


def _yaml_problem(exc: YAMLError) -> str:
    """ruamel's message in one line: what is wrong and on which line (its own text spans several)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}: {problem}"
    return " ".join(str(exc).split())


def _storage_of(file: Path) -> str:
    storage = STORAGE_SUFFIXES.get(file.suffix)
    if storage is None:
        raise LeanEyeError(f"{file}: expected a rosbag2 folder or a .mcap / .db3 file")
    return storage


class BagReader:
    """An open bag: its topics, their promised counts, and its messages."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.exists():
            raise LeanEyeError(f"{self.path}: no such bag (expected a rosbag2 folder or a .mcap / .db3 file)")
        self._stack = contextlib.ExitStack()
        metadata: _Metadata | None = None
        if self.path.is_dir():
            if (self.path / "metadata.yaml").is_file():
                metadata = _read_metadata(self.path)
                self.files = metadata.files
                self.storage = metadata.storage
            else:
                # A folder whose metadata.yaml is lost: read its storage files as they are.
                self.files = sorted(file for file in self.path.iterdir() if file.suffix in STORAGE_SUFFIXES)
                if not self.files:
                    raise LeanEyeError(f"{self.path}: neither metadata.yaml nor .mcap / .db3 files in this folder")
                storages = {_storage_of(file) for file in self.files}
                if len(storages) > 1:
                    raise LeanEyeError(f"{self.path}: mixes storages {', '.join(sorted(storages))}")
                self.storage = storages.pop()
        else:
            self.storage = _storage_of(self.path)
            self.files = [self.path]
        try:
            # Compressed bags need rosbags' folder reader to decompress; the count check below
            # still catches the QoS mismatch it can fall into.
            targets = [self.path] if metadata is not None and metadata.compressed else self.files
            self._sources = [self._open_source(target) for target in targets]
        except BaseException:
            self._stack.close()
            raise
        connections = [connection for source in self._sources for connection in source.connections]
        if metadata is not None:
            self.topics = dict(metadata.topics)
            self.counts = dict(metadata.counts)
            self.counts_from = "metadata.yaml"
            self.start_ns, self.end_ns, self.message_count = metadata.start_ns, metadata.end_ns, metadata.message_count
        else:
            self.topics, counts = {}, Counter()
            for connection in connections:
                self.topics.setdefault(connection.topic, connection.msgtype)
                counts[connection.topic] += connection.msgcount
            self.counts = dict(counts)
            self.counts_from = "MCAP summary" if self.storage == "mcap" else "database"
            self.message_count = sum(source.message_count for source in self._sources)
            spans = [(source.start_time, source.end_time - 1) for source in self._sources if source.message_count]
            self.start_ns = min((start for start, _ in spans), default=0)
            self.end_ns = max((end for _, end in spans), default=0)
        for connection in connections:
            self.topics.setdefault(connection.topic, connection.msgtype)
            self.counts.setdefault(connection.topic, 0)
        self.typestore = _typestore_for(connections)

    def _open_source(self, target: Path) -> Reader:
        try:
            reader = Reader(target)
            reader.open()
        except Exception as exc:  # noqa: BLE001 - each storage backend raises its own types
            raise LeanEyeError(f"{target}: not a readable {self.storage} bag ({type(exc).__name__}: {exc})") from None
        self._stack.callback(reader.close)
        return reader

    def close(self) -> None:
        self._stack.close()

    def _check_topics(self, topics: Iterable[str] | None) -> set[str]:
        if topics is None:
            return set(self.topics)
        wanted = set(topics)
        absent = sorted(wanted - set(self.topics))
        if absent:
            present = ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(self.topics.items()))
            raise LeanEyeError(f"{self.path}: no topic {', '.join(absent)}; topics present: {present or 'none'}")
        return wanted

    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, log_time_ns, CDR bytes) of every message on `topics` (default: all).

        When the pass runs to the end, the number read per topic must equal the bag's promise.
        """
        wanted = self._check_topics(topics)
        read: Counter[str] = Counter()
        for source in self._sources:
            connections = [connection for connection in source.connections if connection.topic in wanted]
            if not connections:
                continue
            messages = source.messages(connections=connections)
            while True:
                try:
                    connection, log_time_ns, data = next(messages)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - each storage backend raises its own types
                    raise LeanEyeError(
                        f"{source.path}: unreadable after {sum(read.values())} messages ({type(exc).__name__}: {exc})"
                    ) from None
                read[connection.topic] += 1
                yield connection.topic, connection.msgtype, log_time_ns, data
        for topic in sorted(wanted):
            if read[topic] != self.counts[topic]:
                raise LeanEyeError(
                    f"{self.path}: topic {topic}: read {read[topic]} messages but the {self.counts_from} "
                    f"promises {self.counts[topic]}"
                )

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        return self.typestore.deserialize_cdr(data, msgtype)

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, Any]]:
        """(topic, log_time_ns, message) of every message on `topics` (default: all)."""
        for index, (topic, msgtype, log_time_ns, data) in enumerate(self.raw_messages(topics)):
            try:
                msg = self.deserialize(data, msgtype)
            except Exception as exc:  # noqa: BLE001 - CDR decoding of corrupt bytes fails in many ways
                raise LeanEyeError(
                    f"{self.path}: topic {topic}: message {index} at {log_time_ns} ns does not decode as {msgtype} ({exc})"
                ) from None
            yield topic, log_time_ns, msg

    def info(self) -> BagInfo:
        return BagInfo(
            path=self.path,
            storage=self.storage,
            files=list(self.files),
            size_bytes=sum(file.stat().st_size for file in self.files),
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            message_count=self.message_count,
            topics=[TopicInfo(name, self.topics[name], self.counts[name]) for name in sorted(self.topics)],
            counted=False,
        )


def _typestore_for(connections: list) -> Any:
    """Humble's and the shipped types, plus the types only the bag defines (from its embedded definitions).

    Known types keep their known definition: embedded definitions are not always complete (the
    message_definitions table of some rosbag2 test bags holds placeholders such as "uint8 level"
    for rcl_interfaces/msg/Log).
    """
    known = msgs.typestore().fielddefs
    types = dict(known)
    for connection in connections:
        if connection.msgtype in known or connection.msgdef.format != MessageDefinitionFormat.MSG:
            continue
        try:
            embedded = get_types_from_msg(connection.msgdef.data, connection.msgtype)
        except TypesysError:
            continue  # unparsable: its messages fail to decode later, naming the type
        types.update({name: fields for name, fields in embedded.items() if name not in known})
    store = get_typestore(Stores.EMPTY)
    store.register(types)
    return store


@contextlib.contextmanager
def open_bag_reader(path: Path | str) -> Iterator[BagReader]:
    reader = BagReader(path)
    try:
        yield reader
    finally:
        reader.close()


def bag_info(path: Path | str, count: bool = False) -> BagInfo:
    """Topics, types, counts, time span and storage; `count` reads every message to count it."""
    with open_bag_reader(path) as reader:
        info = reader.info()
        if not count:
            return info
        counted = Counter(topic for topic, _, _, _ in reader.raw_messages())
    topics = [TopicInfo(topic.name, topic.msgtype, counted[topic.name]) for topic in info.topics]
    return dataclasses.replace(info, topics=topics, message_count=sum(counted.values()), counted=True)
