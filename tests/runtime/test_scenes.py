"""The procedural scene generator: determinism, exact boxes, KITTI-like difficulty, smooth sequences, bags."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from leaneye.cli import main as leaneye_main
from leaneye.scenes.classes import SCENE_CLASSES
from leaneye.scenes.dataset import GROUND_TRUTH_TOPIC, IGNORE_TOPIC, IMAGE_TOPIC, LABEL_INFO_TOPIC
from leaneye.scenes.render import SceneSequence, generate_frames

pytestmark = pytest.mark.runtime_core


def test_same_seed_gives_identical_frames_and_other_seeds_differ():
    a = list(generate_frames(4, seed=7))
    b = list(generate_frames(4, seed=7))
    c = list(generate_frames(4, seed=8))
    for fa, fb in zip(a, b):
        assert fa.image.tobytes() == fb.image.tobytes()
        assert fa.objects == fb.objects and fa.stamp_ns == fb.stamp_ns
    assert a[0].image.tobytes() != c[0].image.tobytes()


def test_a_frame_does_not_depend_on_which_earlier_frames_were_painted():
    painted_all = SceneSequence(3)
    frames = [painted_all.frame(i) for i in range(6)]
    skipped = SceneSequence(3).frame(5)
    assert skipped.image.tobytes() == frames[5].image.tobytes()
    assert skipped.objects == frames[5].objects


def _clean_pair(seed: int, index: int):
    """Two identical sequences at frame `index`, without blur or noise, so pixel differences are exact."""
    pair = []
    for _ in range(2):
        sequence = SceneSequence(seed)
        sequence.blur_sigma, sequence.noise_sigma = 0.0, 0.0
        if index:
            sequence.frame(index - 1)
        pair.append(sequence)
    return pair


@pytest.mark.slow
def test_boxes_are_the_extent_of_the_pixels_each_object_changes():
    """Remove one actor and repaint: the pixels that change are exactly what it showed (occlusion included)."""
    checked = {"person": 0, "traffic light": 0, "car": 0}
    for seed in (11, 12, 13, 14):
        reference_seq, _ = _clean_pair(seed, 3)
        reference = reference_seq.frame(3)
        for obj in reference.objects:
            name = obj.class_name
            if name not in checked or checked[name] >= 6:
                continue
            if name == "car" and obj.occlusion > 0:  # the shadow of a hidden car shows around its occluder
                continue
            _, without_seq = _clean_pair(seed, 3)
            without_seq.actors = [a for a in without_seq.actors if a.track_id != obj.track_id]
            changed = np.any(reference.image != without_seq.frame(3).image, axis=2)
            rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
            extent = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            if name == "person" and not any(
                o.track_id == obj.track_id and o.class_name == "bicycle" for o in reference.objects
            ):
                assert tuple(obj.box) == extent, (seed, obj)
            elif name == "car":
                # cars also cast a shadow on the road: the box lies inside the changed area and nearly fills it
                x1, y1, x2, y2 = obj.box
                assert x1 >= extent[0] and y1 >= extent[1] and x2 <= extent[2] and y2 <= extent[3]
                box_area = (x2 - x1) * (y2 - y1)
                extent_area = (extent[2] - extent[0]) * (extent[3] - extent[1])
                assert box_area / extent_area > 0.6, (seed, obj, extent)
            else:  # traffic lights: the pole is scenery of the same actor, below the housing
                x1, y1, x2, y2 = obj.box
                assert (extent[0], extent[1]) <= (x1, y1) and extent[2] >= x2 and extent[3] >= y2
                housing = changed[int(y1) : int(y2), int(x1) : int(x2)]
                assert housing[0].any() and housing[:, 0].any() and housing[:, -1].any()
            checked[name] += 1
    assert all(count > 0 for count in checked.values()), checked


def test_object_sizes_follow_kitti():
    """About half of the cars shorter than 45 px, at least 15 % shorter than 25 px (1224x370)."""
    heights = []
    for seed in range(200, 208):
        sequence = SceneSequence(seed)
        for index in (0, 10, 20):
            heights += [o.box[3] - o.box[1] for o in sequence.frame(index).objects if o.class_name == "car"]
    heights = np.array(heights)
    assert len(heights) > 100
    assert 0.35 <= np.mean(heights < 45) <= 0.65
    assert np.mean(heights < 25) >= 0.15


def test_ignore_rule_follows_eval_md():
    for frame in generate_frames(3, seed=21):
        for obj in frame.objects:
            too_small = obj.box[3] - obj.box[1] < 25
            assert obj.ignore == (too_small or obj.visible_fraction < 0.5)


def test_objects_move_smoothly_between_frames():
    frames = list(generate_frames(12, seed=5))
    ious = []
    for previous, current in zip(frames, frames[1:]):
        before = {(o.track_id, o.class_id): o for o in previous.objects if not o.ignore}
        for obj in current.objects:
            old = before.get((obj.track_id, obj.class_id))
            if obj.ignore or old is None:
                continue
            a, b = np.array(old.box), np.array(obj.box)
            inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
            union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
            ious.append(inter / union)
    assert len(ious) > 30
    assert np.median(ious) > 0.6
    stamps = np.diff([f.stamp_ns for f in frames])
    assert np.all(stamps == 100_000_000)


def _read_mcap(path):
    """Foxglove's reader, independent of rosbags: {topic: [(log_time, decoded message)]}."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out = {}
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, channel, message, decoded in reader.iter_decoded_messages():
            out.setdefault(channel.topic, []).append((message.log_time, decoded))
    return out


def _read_sqlite3(path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from leaneye.msgs import shipped_types

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(shipped_types())
    out = {}
    with Reader(path) as reader:
        for connection, stamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((stamp, store.deserialize_cdr(raw, connection.msgtype)))
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_scenes_cli_writes_coco_and_a_bag_that_independent_readers_read_back(tmp_path, storage):
    out = tmp_path / "scenes"
    assert (
        leaneye_main(
            ["scenes", "--frames", "4", "--out", str(out), "--storage", storage, "--seed", "2", "--compressed"]
        )
        == 0
    )
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 4
    assert {c["name"] for c in coco["categories"]} == set(SCENE_CLASSES)
    metadata = (out / "bag" / "metadata.yaml").read_text()
    assert "version: 8" in metadata
    bag_file = next((out / "bag").glob("*.mcap" if storage == "mcap" else "*.db3"))
    messages = _read_mcap(bag_file) if storage == "mcap" else _read_sqlite3(out / "bag")
    images = messages[IMAGE_TOPIC]
    assert len(images) == 4 and len(messages[IMAGE_TOPIC + "/compressed"]) == 4
    assert len(messages[LABEL_INFO_TOPIC]) == 1
    assert [c.class_name for c in messages[LABEL_INFO_TOPIC][0][1].class_map] == list(SCENE_CLASSES)
    for k, ((_stamp, image), (_, truth), (_, ignored)) in enumerate(
        zip(images, messages[GROUND_TRUTH_TOPIC], messages[IGNORE_TOPIC])
    ):
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
        assert image.encoding == "bgr8"
        assert np.array_equal(pixels, cv2.imread(str(out / "images" / coco["images"][k]["file_name"])))
        for msg in (truth, ignored):
            assert msg.header.frame_id == image.header.frame_id == "camera"
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (
                image.header.stamp.sec,
                image.header.stamp.nanosec,
            )
        anns = [a for a in coco["annotations"] if a["image_id"] == coco["images"][k]["id"]]
        labelled = [a for a in anns if not a["iscrowd"]]
        assert len(truth.detections) == len(labelled) and len(ignored.detections) == len(anns) - len(labelled)
        for det, ann in zip(truth.detections, labelled):
            x, y, w, h = ann["bbox"]
            assert det.bbox.center.position.x == pytest.approx(x + w / 2)
            assert det.bbox.size_y == pytest.approx(h)
            assert SCENE_CLASSES[int(det.results[0].hypothesis.class_id)] == next(
                c["name"] for c in coco["categories"] if c["id"] == ann["category_id"]
            )


def test_scenes_cli_rejects_bad_input_without_leaving_output(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert leaneye_main(["scenes", "--frames", "0", "--out", str(out)]) == 2
    assert "--frames" in capsys.readouterr().err
    assert leaneye_main(["scenes", "--frames", "2", "--out", str(out), "--size", "0x10"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    assert leaneye_main(["scenes", "--frames", "2", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [out]  # no temporary left behind
