"""Label-free frame sources (leaneye_compress.frames): image files and folders, videos, rosbag2 image
topics (Image and CompressedImage; MCAP and sqlite3), generated scenes; the network inputs made
from them by the runtime's own input path."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.torch_free

from helpers import TINY_CLASSES, constant_model, engine_manifest, frame  # noqa: E402

from leaneye import msgs  # noqa: E402
from leaneye.bags import open_bag_writer  # noqa: E402
from leaneye.engine import load_manifest, write_engine  # noqa: E402
from leaneye.errors import LeanEyeError  # noqa: E402
from leaneye.scenes.dataset import IMAGE_TOPIC, generate_scene_dataset  # noqa: E402
from leaneye.scenes.render import SceneSequence  # noqa: E402
from leaneye.vision.letterbox import letterbox  # noqa: E402
from leaneye_compress.frames import (  # noqa: E402
    FramesConfig,
    GeneratedFrames,
    frames_inputs,
    letterboxed,
    load_frames,
    network_inputs,
)
from leaneye_compress.models import contract  # noqa: E402

SIZE = (96, 48)  # width, height of the test frames


def shade(k: int) -> np.ndarray:
    """Frame k: a flat grey level 20 k, so that order and thinning show in the pixels."""
    return np.full((SIZE[1], SIZE[0], 3), 20 * k, np.uint8)


def levels(frames) -> list[int]:
    return [round(float(f.image.mean()) / 20) for f in frames]


def write_video(path, count: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE)
    assert writer.isOpened()
    for k in range(count):
        writer.write(shade(k))
    writer.release()


def write_image_bag(path, count: int, compressed: bool, topic: str = "/cam/image_raw") -> None:
    with open_bag_writer(path) as writer:
        if compressed:
            writer.add_topic(topic + "/compressed", msgs.COMPRESSED_IMAGE)
        else:
            writer.add_topic(topic, msgs.IMAGE)
        writer.add_topic("/chatter", "std_msgs/msg/String")
        for k in range(count):
            stamp = (k + 1) * 100_000_000
            if compressed:
                writer.write(topic + "/compressed", stamp, msgs.compressed_image_msg(shade(k), stamp, "cam", fmt="png"))
            else:
                writer.write(topic, stamp, msgs.image_msg(shade(k), stamp, "cam"))


def test_image_files_and_folders_in_order(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in (2, 0, 1):  # written out of order: read by name
        cv2.imwrite(str(folder / f"{k:03d}.png"), shade(k))
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), shade(5))
    frames = load_frames(FramesConfig(paths=(str(single), str(folder))), "frames")
    assert levels(frames) == [5, 0, 1, 2]
    assert [f.source for f in frames] == [str(single)] + [str(folder / f"{k:03d}.png") for k in range(3)]
    assert all(f.image.dtype == np.uint8 and f.image.shape == (SIZE[1], SIZE[0], 3) for f in frames)


def test_video_every_and_max_frames(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, 7)
    frames = load_frames(FramesConfig(paths=(str(video),), every=3), "frames")
    assert [f.source for f in frames] == [f"{video}#0", f"{video}#3", f"{video}#6"]
    assert levels(frames) == [0, 3, 6]
    capped = load_frames(FramesConfig(paths=(str(video), str(video)), every=2, max_frames=5), "frames")
    assert [f.source for f in capped] == [f"{video}#{k}" for k in (0, 2, 4, 6)] + [f"{video}#0"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [False, True], ids=["Image", "CompressedImage"])
def test_bag_image_topics(tmp_path, storage, compressed):
    bag = tmp_path / ("drive.mcap" if storage == "mcap" else "drive.db3")
    write_image_bag(bag, 5, compressed)
    topic = "/cam/image_raw/compressed" if compressed else "/cam/image_raw"
    # The only image topic by default; the other form of the name by image_transport's naming.
    for asked in ("", "/cam/image_raw", "/cam/image_raw/compressed"):
        frames = load_frames(FramesConfig(paths=(str(bag),), topic=asked, every=2), "frames")
        assert [f.source for f in frames] == [f"{bag} {topic}#{k}" for k in (0, 2, 4)]
        assert levels(frames) == [0, 2, 4]  # PNG and raw: lossless


def test_scene_dataset_bag_folder_with_two_image_topics(tmp_path):
    dataset = tmp_path / "scenes"
    generate_scene_dataset(dataset, frames=3, seed=4, size=SIZE, storage="sqlite3", compressed=True)
    config = FramesConfig(paths=(str(dataset / "bag"),), topic=IMAGE_TOPIC)
    frames = load_frames(config, "frames")
    expected = SceneSequence(4, SIZE)
    assert len(frames) == 3
    for k, found in enumerate(frames):
        np.testing.assert_array_equal(found.image, expected.frame(k).image)
    with pytest.raises(LeanEyeError, match="several image topics .*/camera/image_raw .*/camera/image_raw/compressed"):
        load_frames(dataclasses.replace(config, topic=""), "frames")
    assert frames_inputs(config) == {
        "frames[0]/metadata.yaml": dataset / "bag" / "metadata.yaml",
        "frames[0]/bag.db3": dataset / "bag" / "bag.db3",
    }


def test_generated_scenes_follow_the_sequences():
    scenes = GeneratedFrames(first_seed=7, sequences=2, frames_per_sequence=2, frame_step=3)
    frames = load_frames(FramesConfig(scenes=scenes), "frames")
    assert [f.source for f in frames] == ["scene 7#0", "scene 7#3", "scene 8#0", "scene 8#3"]
    sequence = SceneSequence(8, (1224, 370))
    sequence.frame(0)
    np.testing.assert_array_equal(frames[3].image, sequence.frame(3).image)
    assert frames_inputs(FramesConfig(scenes=scenes)) == {}


def test_frames_inputs_name_every_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        cv2.imwrite(str(folder / f"{k}.png"), shade(k))
    video = tmp_path / "clip.avi"
    write_video(video, 2)
    bag = tmp_path / "drive.mcap"
    write_image_bag(bag, 2, compressed=True)
    inputs = frames_inputs(FramesConfig(paths=(str(folder), str(video), str(bag))))
    assert inputs == {
        "frames[0]/0.png": folder / "0.png",
        "frames[0]/1.png": folder / "1.png",
        "frames[1]": video,
        "frames[2]": bag,
    }


def test_too_few_frames_says_how_many_and_where(tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, 3)
    with pytest.raises(LeanEyeError) as raised:
        load_frames(
            FramesConfig(paths=(str(video),), scenes=GeneratedFrames(sequences=1, frames_per_sequence=1)),
            "calibrate.frames",
            minimum=10,
        )
    message = str(raised.value)
    assert message == (f"calibrate.frames: found 4 frames in {video}; generated scenes (seeds 0..0), need at least 10")
    with pytest.raises(LeanEyeError, match=r"^frames: found 0 frames in no sources .*need at least 1$"):
        load_frames(FramesConfig(), "frames")


def test_bad_paths_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = {
        str(tmp_path / "missing.mp4"): "no such file or folder",
        str(text): r"not an image \(.jpg.*\), a video \(.mp4.*\) or a rosbag2 bag",
        str(empty): "no images",
        str(broken): "not a readable image",
    }
    for path, expected in cases.items():
        with pytest.raises(LeanEyeError, match=expected) as raised:
            load_frames(FramesConfig(paths=(path,)), "frames")
        assert "\n" not in str(raised.value)


def test_bag_topics_without_images(tmp_path):
    bag = tmp_path / "drive.mcap"
    write_image_bag(bag, 2, compressed=False)
    with pytest.raises(LeanEyeError, match="topic /chatter: carries std_msgs/msg/String, not"):
        load_frames(FramesConfig(paths=(str(bag),), topic="/chatter"), "frames")
    with pytest.raises(LeanEyeError, match=r"/front/image_raw.*image topics present: /cam/image_raw \(sensor_msgs"):
        load_frames(FramesConfig(paths=(str(bag),), topic="/front/image_raw"), "frames")
    silent = tmp_path / "silent.mcap"
    with open_bag_writer(silent) as writer:
        writer.add_topic("/cam/image_raw", msgs.IMAGE)
        writer.add_topic("/chatter", "std_msgs/msg/String")
    with pytest.raises(
        LeanEyeError, match=r"topic /cam/image_raw holds no images; image topics present: /cam/image_raw"
    ):
        load_frames(FramesConfig(paths=(str(silent),)), "frames")
    none = tmp_path / "none.mcap"
    with open_bag_writer(none) as writer:
        writer.add_topic("/chatter", "std_msgs/msg/String")
    with pytest.raises(LeanEyeError, match="no image topic"):
        load_frames(FramesConfig(paths=(str(none),)), "frames")


def write_engine_dir(path, **input_fields):
    hw = (64, 96)
    manifest = engine_manifest(hw, TINY_CLASSES)
    manifest["input"].update(input_fields)
    write_engine(path, constant_model(np.zeros((1, 2, 4 + len(TINY_CLASSES)), np.float32), [1, 3, *hw]), manifest)
    return path


def test_network_inputs_are_what_the_detector_feeds_its_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    from leaneye.detector import Detector

    engine = write_engine_dir(tmp_path / "engine")
    images = [frame(), shade(3), frame()[:100, :]]  # sizes change between frames
    batch = network_inputs(images, load_manifest(engine))
    assert batch.shape == (3, 3, 64, 96) and batch.dtype == np.float32
    with Detector.from_engine(engine, threads=1) as detector:
        for image, tensor in zip(images, batch):
            detector.preprocess(image)
            np.testing.assert_array_equal(tensor, detector.input.tensor[0])


def test_network_inputs_apply_colour_order_mean_and_std(tmp_path):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    engine = write_engine_dir(tmp_path / "engine", color="rgb", mean=list(mean), std=list(std))
    image = frame()
    (tensor,) = network_inputs([image], load_manifest(engine))
    boxed, _ = letterbox(image, (64, 96), "center", 114)
    expected = (boxed[:, :, ::-1].transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[
        :, None, None
    ]
    np.testing.assert_allclose(tensor, expected, atol=1e-5)


def test_letterboxed_follows_leandet_contract():
    image = frame()
    batch = letterboxed([image, shade(2)])
    assert batch.shape == (2, *contract.INPUT_SIZE, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], letterbox(image, contract.INPUT_SIZE, "center", 114)[0])
    small = letterboxed([image], (32, 64))
    assert small.shape == (1, 32, 64, 3)
    with pytest.raises(LeanEyeError, match="expected an \\(H, W, 3\\) uint8 BGR image"):
        letterboxed([np.zeros((4, 4), np.uint8)])


def test_a_frame_that_does_not_decode_is_skipped_and_counted(tmp_path, capsys):
    bag = tmp_path / "drive.mcap"
    with open_bag_writer(bag) as writer:
        writer.add_topic("/cam/image_raw/compressed", msgs.COMPRESSED_IMAGE)
        for k in range(3):
            data = b"\xff\xd8 not really a jpeg" if k == 1 else shade(k)
            writer.write("/cam/image_raw/compressed", k + 1, msgs.compressed_image_msg(data, k + 1, "cam", fmt="png"))
    frames = load_frames(FramesConfig(paths=(str(bag),)), "frames")
    assert [f.source for f in frames] == [f"{bag} /cam/image_raw/compressed#{k}" for k in (0, 2)]
    assert "skipped 1 frames that do not decode" in capsys.readouterr().err
