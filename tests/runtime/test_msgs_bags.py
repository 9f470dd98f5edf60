"""Messages without ROS, rosbag2 bags in both storages, and latency summaries.

Bags our writer produced are read back by readers that share no code with ours: Foxglove's
`mcap` + `mcap_ros2` for MCAP, rosbags' AnyReader (typestore built only from the definitions the
bag embeds) for sqlite3. A bag that rosbag2 itself wrote proves our reader reads real bags.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_fixtures_dir
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader
from ruamel.yaml import YAML

from leaneye import bags, msgs
from leaneye.errors import LeanEyeError
from leaneye.latency import FrameLatency, LatencySummary

pytestmark = pytest.mark.runtime_core

REPO = Path(__file__).resolve().parents[2]
STAMP = 1_700_000_000_250_000_000
RNG = np.random.default_rng(7)
BGR = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
BOXES = np.array([[10.5, 20.25, 110.0, 220.75], [0.0, 0.0, 1.0, 3.0]], dtype=np.float32)
SCORES = [0.875, 0.25]
CLASSES = ["car", "person"]
LATENCY = FrameLatency(
    decode_ms=1.5,
    preprocess_ms=2.25,
    inference_ms=7.0,
    postprocess_ms=0.5,
    total_ms=11.5,
    num_detections=2,
    receipt_to_publish_ms=14.5,
    age_ms=40.25,
    frames_dropped=3,
)


def test_frame_latency_definition_is_the_ros_package_one():
    shipped = REPO / "ros2_ws/src/leaneye/leaneye/msgs/definitions/FrameLatency.msg"
    ros_package = REPO / "ros2_ws/src/leaneye_msgs/msg/FrameLatency.msg"
    assert shipped.read_bytes() == ros_package.read_bytes()
    assert msgs.message_definition(msgs.FRAME_LATENCY) == ros_package.read_text()


def test_typestore_has_humble_vision_msgs_layout():
    fields = {name: dict(definition[1]) for name, definition in msgs.typestore().fielddefs.items()}
    assert list(fields["vision_msgs/msg/Detection2D"]) == ["header", "results", "bbox", "id"]
    assert fields["vision_msgs/msg/BoundingBox2D"]["center"][1] == "vision_msgs/msg/Pose2D"
    assert fields["vision_msgs/msg/Pose2D"]["position"][1] == "vision_msgs/msg/Point2D"
    assert list(fields["vision_msgs/msg/ObjectHypothesisWithPose"]) == ["hypothesis", "pose"]
    assert fields["vision_msgs/msg/ObjectHypothesis"]["class_id"][1] == ("string", 0)
    assert fields["vision_msgs/msg/VisionClass"]["class_id"][1] == ("uint16", 0)
    assert list(fields[msgs.FRAME_LATENCY]) == [
        "header",
        "decode_ms",
        "preprocess_ms",
        "inference_ms",
        "postprocess_ms",
        "total_ms",
        "num_detections",
        "receipt_to_publish_ms",
        "age_ms",
        "frames_dropped",
    ]


def _cdr_round_trip(msg):
    store = msgs.typestore()
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


@pytest.mark.parametrize(
    "encoding, step",
    [("bgr8", 20), ("bgr8", None), ("rgb8", None), ("bgra8", None), ("rgba8", 24), ("mono8", 8)],
)
def test_image_round_trip(encoding, step):
    msg = _cdr_round_trip(msgs.image_msg(BGR, STAMP, "cam", encoding=encoding, step=step))
    assert (msg.encoding, msg.height, msg.width, msgs.stamp_to_ns(msg.header.stamp)) == (encoding, 6, 5, STAMP)
    if step:
        assert msg.step == step and len(msg.data) == step * 6
    expected = cv2.cvtColor(cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) if encoding == "mono8" else BGR
    assert np.array_equal(msgs.image_from_msg(msg), expected)


def test_rgb8_bytes_are_in_rgb_order():
    msg = msgs.image_msg(BGR, STAMP, "cam", encoding="rgb8")
    assert np.array_equal(np.asarray(msg.data).reshape(6, 5, 3), BGR[..., ::-1])


def test_four_channel_encodings_carry_alpha_last():
    """bgra8 (CARLA's ROS bridge camera) and rgba8: colour in their order, then an opaque alpha."""
    for encoding, colour in (("bgra8", BGR), ("rgba8", BGR[..., ::-1])):
        data = np.asarray(msgs.image_msg(BGR, STAMP, "cam", encoding=encoding).data).reshape(6, 5, 4)
        assert np.array_equal(data[..., :3], colour) and (data[..., 3] == 255).all()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"encoding": "bgr16"}, "encoding"),
        ({"encoding": "yuv422"}, "encoding"),
        ({"height": 0}, "height"),
        ({"step": 14}, "step"),
        ({"data": np.zeros(20 * 6 - 1, dtype=np.uint8)}, "data"),
        ({"height": 7}, "data"),
    ],
)
def test_image_from_msg_names_the_bad_field(change, field):
    msg = msgs.image_msg(BGR, STAMP, "cam", encoding="bgr8", step=20)
    for name, value in change.items():
        setattr(msg, name, value)
    with pytest.raises(LeanEyeError, match=rf"sensor_msgs/Image\.{field}"):
        msgs.image_from_msg(msg)


def test_compressed_images():
    smooth = cv2.GaussianBlur(RNG.integers(0, 256, size=(48, 64, 3), dtype=np.uint8), (9, 9), 3)
    jpeg = _cdr_round_trip(msgs.compressed_image_msg(smooth, STAMP, "cam", fmt="jpeg", quality=95))
    assert jpeg.format == "jpeg" and bytes(jpeg.data[:2]) == b"\xff\xd8"
    assert cv2.PSNR(msgs.image_from_compressed_msg(jpeg), smooth) > 30
    png = msgs.compressed_image_msg(smooth, STAMP, "cam", fmt="png")
    assert np.array_equal(msgs.image_from_compressed_msg(png), smooth)
    prebuilt = msgs.compressed_image_msg(bytes(png.data), STAMP, "cam", fmt="png")
    assert np.array_equal(msgs.image_from_any_msg(prebuilt), smooth)
    corrupt = msgs.compressed_image_msg(b"\xff\xd8 not really a jpeg", STAMP, "cam")
    with pytest.raises(LeanEyeError, match=r"CompressedImage\.data"):
        msgs.image_from_compressed_msg(corrupt)


def test_detection_array_round_trip():
    header = msgs.header(STAMP, "cam")
    msg = _cdr_round_trip(msgs.detection_array_msg(header, BOXES, SCORES, CLASSES, ["7", "9"]))
    first = msg.detections[0]
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (60.25, 120.5)
    assert (first.bbox.size_x, first.bbox.size_y) == (99.5, 200.5)
    assert first.header.frame_id == "cam" and first.results[0].hypothesis.class_id == "car"
    boxes, scores, classes, ids = msgs.boxes_from_detection_array(msg)
    assert boxes.dtype == np.float32 and np.array_equal(boxes, BOXES)
    assert scores.tolist() == SCORES and classes == CLASSES and ids == ["7", "9"]
    empty = _cdr_round_trip(msgs.detection_array_msg(header, np.zeros((0, 4)), [], []))
    assert msgs.boxes_from_detection_array(empty)[0].shape == (0, 4)
    with pytest.raises(LeanEyeError, match="2 boxes but 1 scores"):
        msgs.detection_array_msg(header, BOXES, SCORES[:1], CLASSES)
    with pytest.raises(LeanEyeError, match="class_ids"):
        msgs.detection_array_msg(header, BOXES, SCORES, [2, 0])


def test_label_info_and_frame_latency_round_trip():
    header = msgs.header(STAMP, "cam")
    info = _cdr_round_trip(msgs.label_info_msg(header, CLASSES, threshold=0.25))
    assert msgs.class_names_from_label_info(info) == {0: "car", 1: "person"} and info.threshold == 0.25
    latency = _cdr_round_trip(msgs.frame_latency_msg(header, LATENCY))
    assert msgs.frame_latency_from_msg(latency) == LATENCY
    assert msgs.stamp_to_ns(latency.header.stamp) == STAMP and latency.header.frame_id == "cam"


def _load_yaml(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


def _dump_yaml(document: dict, path: Path) -> None:
    with path.open("w") as stream:
        YAML(typ="safe").dump(document, stream)


def _write_every_kind(path: Path, storage: str) -> None:
    header = msgs.header(STAMP, "cam")
    with bags.open_bag_writer(path, storage=storage) as writer:
        writer.add_topic("/padded", msgs.IMAGE)
        writer.add_topic("/rgb", msgs.IMAGE)
        writer.add_topic("/mono", msgs.IMAGE)
        writer.add_topic("/camera/image_raw/compressed", msgs.COMPRESSED_IMAGE)
        writer.add_topic("/detections", msgs.DETECTION_ARRAY)
        writer.add_topic("/label_info", msgs.LABEL_INFO)
        writer.add_topic("/latency", msgs.FRAME_LATENCY)
        writer.write("/padded", STAMP, msgs.image_msg(BGR, STAMP, "cam", encoding="bgr8", step=20))
        writer.write("/rgb", STAMP, msgs.image_msg(BGR, STAMP, "cam", encoding="rgb8"))
        writer.write("/mono", STAMP, msgs.image_msg(BGR, STAMP, "cam", encoding="mono8"))
        writer.write("/camera/image_raw/compressed", STAMP, msgs.compressed_image_msg(BGR, STAMP, "cam", fmt="png"))
        writer.write("/detections", STAMP + 1, msgs.detection_array_msg(header, BOXES, SCORES, CLASSES))
        writer.write("/label_info", STAMP, msgs.label_info_msg(header, CLASSES))
        for offset in range(3):
            writer.write("/latency", STAMP + offset, msgs.frame_latency_msg(header, LATENCY))


def _check_independent_values(by_topic: dict) -> None:
    """Values as a reader with its own decoder sees them (attribute access only)."""
    padded = by_topic["/padded"][0]
    assert (padded.step, padded.encoding, len(bytes(padded.data))) == (20, "bgr8", 120)
    rows = np.frombuffer(bytes(padded.data), dtype=np.uint8).reshape(6, 20)
    assert np.array_equal(rows[:, :15].reshape(6, 5, 3), BGR)
    rgb = by_topic["/rgb"][0]
    assert np.array_equal(np.frombuffer(bytes(rgb.data), dtype=np.uint8).reshape(6, 5, 3), BGR[..., ::-1])
    png = np.frombuffer(bytes(by_topic["/camera/image_raw/compressed"][0].data), dtype=np.uint8)
    assert np.array_equal(cv2.imdecode(png, cv2.IMREAD_COLOR), BGR)
    detection = by_topic["/detections"][0].detections[1]
    assert (detection.bbox.center.position.x, detection.bbox.size_y) == (0.5, 3.0)
    assert (detection.results[0].hypothesis.class_id, detection.results[0].hypothesis.score) == ("person", 0.25)
    assert [entry.class_name for entry in by_topic["/label_info"][0].class_map] == CLASSES
    latency = by_topic["/latency"][2]
    assert (latency.inference_ms, latency.num_detections, latency.header.stamp.sec) == (7.0, 2, STAMP // 10**9)


def _check_our_reader(path: Path) -> None:
    with bags.open_bag_reader(path) as reader:
        assert reader.counts["/latency"] == 3
        got = {}
        for topic, _, msg in reader.messages():
            got.setdefault(topic, []).append(msg)
    assert np.array_equal(msgs.image_from_msg(got["/padded"][0]), BGR)
    assert np.array_equal(msgs.image_from_msg(got["/rgb"][0]), BGR)
    assert msgs.image_from_msg(got["/mono"][0]).shape == (6, 5, 3)
    assert np.array_equal(msgs.boxes_from_detection_array(got["/detections"][0])[0], BOXES)
    assert msgs.frame_latency_from_msg(got["/latency"][0]) == LATENCY


def test_mcap_bag_read_by_foxglove_mcap(tmp_path):
    bag = tmp_path / "every_kind"
    _write_every_kind(bag, "mcap")
    metadata = _load_yaml(bag / "metadata.yaml")["rosbag2_bagfile_information"]
    assert (metadata["version"], metadata["storage_identifier"], metadata["message_count"]) == (8, "mcap", 9)
    [mcap_file] = [bag / name for name in metadata["relative_file_paths"]]
    by_topic: dict = {}
    with mcap_file.open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        schemas = {schema.name: schema for schema in reader.get_summary().schemas.values()}
        for _, channel, _, decoded in reader.iter_decoded_messages():
            by_topic.setdefault(channel.topic, []).append(decoded)
    assert schemas["vision_msgs/msg/Detection2DArray"].encoding == "ros2msg"
    assert "MSG: vision_msgs/Pose2D" in schemas["vision_msgs/msg/Detection2DArray"].data.decode()
    _check_independent_values(by_topic)
    _check_our_reader(bag)
    _check_our_reader(mcap_file)


def test_sqlite3_bag_read_by_rosbags_from_embedded_definitions(tmp_path):
    bag = tmp_path / "every_kind"
    _write_every_kind(bag, "sqlite3")
    metadata = _load_yaml(bag / "metadata.yaml")["rosbag2_bagfile_information"]
    assert (metadata["version"], metadata["storage_identifier"]) == (8, "sqlite3")
    by_topic: dict = {}
    # No default typestore: AnyReader decodes with the definitions the bag carries, or fails.
    with AnyReader([bag]) as reader:
        for connection, _, data in reader.messages():
            by_topic.setdefault(connection.topic, []).append(reader.deserialize(data, connection.msgtype))
    _check_independent_values(by_topic)
    _check_our_reader(bag)
    _check_our_reader(bag / metadata["relative_file_paths"][0])


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    bag = tmp_path / "bag"
    with pytest.raises(RuntimeError):
        with bags.open_bag_writer(bag) as writer:
            writer.add_topic("/latency", msgs.FRAME_LATENCY)
            writer.write("/latency", STAMP, msgs.frame_latency_msg(msgs.header(STAMP, "cam"), LATENCY))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with bags.open_bag_writer(bag) as writer:
        writer.add_topic("/latency", msgs.FRAME_LATENCY)
        with pytest.raises(LeanEyeError, match="not added"):
            writer.write("/other", STAMP, msgs.frame_latency_msg(msgs.header(STAMP, "cam"), LATENCY))
        with pytest.raises(LeanEyeError, match="carries leaneye_msgs/msg/FrameLatency"):
            writer.write("/latency", STAMP, msgs.label_info_msg(msgs.header(STAMP, "cam"), CLASSES))
    with pytest.raises(LeanEyeError, match="already exists"):
        with bags.open_bag_writer(bag):
            pass
    with pytest.raises(LeanEyeError, match="storage"):
        with bags.open_bag_writer(tmp_path / "other", storage="rosbag1"):
            pass


def _talker() -> Path:
    return shared_fixtures_dir() / "rosbag2_talker_sqlite3"


@pytest.mark.parametrize("as_file", [False, True])
def test_reads_a_bag_rosbag2_wrote(as_file):
    path = _talker() / "talker.db3" if as_file else _talker()
    with bags.open_bag_reader(path) as reader:
        assert reader.counts == {"/topic": 10, "/rosout": 10, "/parameter_events": 0}
        messages = list(reader.messages())
    assert len(messages) == 20
    chatter = [msg.data for topic, _, msg in messages if topic == "/topic"]
    assert chatter == [f"Hello, world! {index}" for index in range(10)]
    logs = [msg for topic, _, msg in messages if topic == "/rosout"]
    assert all(log.msg.startswith("Publishing: 'Hello, world!") for log in logs)
    info = bags.bag_info(path, count=True)
    assert (info.message_count, info.storage, info.duration_ns) == (20, "sqlite3", 4_531_096_768)
    assert "Topic: /topic" in info.format_text() and "Count: 10" in info.format_text()


def test_count_mismatch_names_both_counts(tmp_path):
    bag = tmp_path / "talker"
    shutil.copytree(_talker(), bag)
    metadata = bag / "metadata.yaml"
    document = _load_yaml(metadata)
    for entry in document["rosbag2_bagfile_information"]["topics_with_message_count"]:
        if entry["topic_metadata"]["name"] == "/topic":
            entry["message_count"] = 12
    document["rosbag2_bagfile_information"]["message_count"] += 2  # consistent in itself, not with the storage
    _dump_yaml(document, metadata)
    with bags.open_bag_reader(bag) as reader:
        assert len(list(reader.messages(["/rosout"]))) == 10
        with pytest.raises(LeanEyeError, match=r"topic /topic: read 10 messages but the metadata.yaml promises 12"):
            list(reader.messages(["/topic"]))


def test_missing_topic_lists_the_topics_present():
    with bags.open_bag_reader(_talker()) as reader:
        with pytest.raises(
            LeanEyeError, match=r"no topic /camera/image_raw; topics present: .*/topic \(std_msgs/msg/String\)"
        ):
            list(reader.messages(["/camera/image_raw"]))


@pytest.mark.parametrize("storage, damage", [("mcap", "truncate"), ("sqlite3", "truncate"), ("sqlite3", "zero")])
def test_truncated_or_corrupt_bag_names_the_file(tmp_path, storage, damage):
    bag = tmp_path / "bag"
    _write_every_kind(bag, storage)
    [storage_file] = [file for file in bag.iterdir() if file.suffix in (".mcap", ".db3")]
    data = bytearray(storage_file.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 4 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)
    storage_file.write_bytes(bytes(data))
    for path in (bag, storage_file):
        with pytest.raises(
            LeanEyeError, match=rf"{storage_file.name}: (not a readable {storage} bag|unreadable after)"
        ):
            with bags.open_bag_reader(path) as reader:
                list(reader.messages())
    storage_file.unlink()
    with pytest.raises(LeanEyeError, match="storage files that are missing"):
        bags.BagReader(bag)
    with pytest.raises(LeanEyeError, match="no such bag"):
        bags.bag_info(tmp_path / "absent")


def test_folder_whose_metadata_qos_differs_from_the_storage_file(tmp_path):
    """rosbag2 records QoS in metadata.yaml and in the storage file, not always identically;
    rosbags' folder reader then yields no message at all. Ours reads the storage file itself."""
    bag = tmp_path / "bag"
    _write_every_kind(bag, "mcap")
    metadata = bag / "metadata.yaml"
    document = _load_yaml(metadata)
    for entry in document["rosbag2_bagfile_information"]["topics_with_message_count"]:
        entry["topic_metadata"]["offered_qos_profiles"] = entry["topic_metadata"]["offered_qos_profiles"].replace(
            "depth: 10", "depth: 0"
        )
    _dump_yaml(document, metadata)
    with Reader(bag) as plain_rosbags:
        assert plain_rosbags.message_count == 9 and list(plain_rosbags.messages()) == []
    with bags.open_bag_reader(bag) as reader:
        assert len(list(reader.raw_messages())) == 9


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda text: text.replace("storage_identifier: mcap", "storage_identifier: sqlite3"),
            r"storage_identifier is sqlite3, but the bag's files are bag.mcap$",
        ),
        (
            lambda text: text.replace("\n  message_count: 9\n", "\n  message_count: 10\n"),
            r"message_count 10 disagrees with the sum of its topics' counts, 9$",
        ),
        (lambda text: text + "\n: [", r"not valid YAML \(line \d+: "),
    ],
)
def test_metadata_that_contradicts_itself_or_the_files_is_a_one_line_error(tmp_path, edit, message):
    bag = tmp_path / "bag"
    _write_every_kind(bag, "mcap")
    metadata = bag / "metadata.yaml"
    original = metadata.read_text()
    metadata.write_text(edit(original))
    assert metadata.read_text() != original
    with pytest.raises(LeanEyeError, match=message) as error:
        bags.bag_info(bag, count=True)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{metadata}: ")


def test_find_image_topic_follows_image_transport_naming():
    topics = {
        "/cam/image_raw/compressed": msgs.COMPRESSED_IMAGE,
        "/front/image": msgs.IMAGE,
        "/chatter": "std_msgs/msg/String",
    }
    assert bags.find_image_topic(topics, "/cam/image_raw") == "/cam/image_raw/compressed"
    assert bags.find_image_topic(topics, "/cam/image_raw/compressed") == "/cam/image_raw/compressed"
    assert bags.find_image_topic(topics, "/front/image/compressed") == "/front/image"
    with pytest.raises(LeanEyeError, match=r"carries std_msgs/msg/String"):
        bags.find_image_topic(topics, "/chatter")
    with pytest.raises(LeanEyeError, match=r"image topics present: /cam/image_raw/compressed .*, /front/image"):
        bags.find_image_topic(topics, "/rear/image")


def test_iter_images_counts_a_bad_frame_and_goes_on(tmp_path):
    bag = tmp_path / "bag"
    with bags.open_bag_writer(bag) as writer:
        writer.add_topic("/cam/compressed", msgs.COMPRESSED_IMAGE)
        for index in range(4):
            stamp = STAMP + index * 40_000_000
            frame = np.full_like(BGR, 60 * index)
            msg = msgs.compressed_image_msg(
                b"garbage" if index == 2 else cv2.imencode(".png", frame)[1].tobytes(), stamp, "cam", fmt="png"
            )
            writer.write("/cam/compressed", stamp, msg)
    with bags.open_bag_reader(bag) as reader:
        items = list(bags.iter_images(reader, "/cam/compressed"))
        with pytest.raises(LeanEyeError, match="not an image topic"):
            list(bags.iter_images(reader, "/cam"))
    assert [type(item).__name__ for item in items] == ["ImageFrame", "ImageFrame", "FrameError", "ImageFrame"]
    assert items[2].index == 2 and "CompressedImage.data" in items[2].reason
    assert [item.stamp_ns - STAMP for item in items if isinstance(item, bags.ImageFrame)] == [
        0,
        40_000_000,
        120_000_000,
    ]
    assert np.all(items[3].image == 180) and items[3].header.frame_id == "cam" and items[3].decode_ms >= 0


def test_latency_summary():
    frames = [
        {"decode": 1.0, "preprocess": 2.0, "inference": float(ms), "postprocess": 0.5, "total": float(ms) + 3.5}
        for ms in range(1, 101)
    ]
    summary = LatencySummary(frames, wall_s=4.0)
    assert summary.throughput_fps == 25.0
    assert summary.stages["inference"]["p50"] == pytest.approx(50.5)
    assert summary.stages["inference"]["p90"] == pytest.approx(90.1)
    assert summary.stages["inference"]["p99"] == pytest.approx(99.01)
    assert summary.stages["total"]["max"] == 103.5 and summary.stages["decode"]["p99"] == 1.0
    table = summary.format_table()
    assert "inference" in table and "99.01" in table and "25.0 frames/s" in table
    assert LatencySummary([LATENCY.timings()], wall_s=0.5).stages["total"]["p50"] == 11.5
    with pytest.raises(LeanEyeError, match="frame 0 lacks the stage"):
        LatencySummary([{"decode": 1.0}], wall_s=1.0)
    with pytest.raises(LeanEyeError, match="no frames"):
        LatencySummary([], wall_s=1.0)
