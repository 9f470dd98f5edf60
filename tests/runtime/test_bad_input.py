"""Bad input as a hostile user would give it: each is one line naming the file, frame or option and
what was expected (exit 2), never a traceback or a hang, and nothing half-written is left behind.

The engine is the committed tiny one (tests/data/tiny_engine): these run without onnx or ../shared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import TINY_ENGINE_DIR, TINY_INPUT_HW

from leaneye import bags, msgs
from leaneye.cli import main as leaneye_main
from leaneye.errors import LeanEyeError
from leaneye.eval import coco_ground_truth, kitti_ground_truth
from leaneye.image_io import MAX_IMAGE_PIXELS, decode_image, header_size, image_paths

pytestmark = pytest.mark.runtime_core

ENGINE = str(TINY_ENGINE_DIR)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a few bytes): OpenCV 5 raises on it,
    OpenCV 4 returns None."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its start-of-frame size rewritten."""
    data = bytearray(cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A TIFF directory claiming width x height: OpenCV 4 and 5 both raise cv2.error on it, and OpenCV 4
    also logs a "[ WARN ]" line of its own."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 4, height)]
    directory = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", tag, kind, 1, v) for tag, kind, v in tags)
    return b"II*\x00" + struct.pack("<I", 9) + b"\x00" + directory + struct.pack("<I", 0)


def error_lines(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if line.strip() and "%|" not in line]  # less tqdm


def image(path: Path) -> Path:
    cv2.imwrite(str(path), np.full((40, 60, 3), 90, np.uint8))
    return path


# --- image files and encoded frames ------------------------------------------------------------


@pytest.mark.parametrize("fmt", [".png", ".jpg", ".bmp"])
def test_header_size_reads_real_encoded_images(fmt):
    encoded = cv2.imencode(fmt, np.zeros((37, 53, 3), np.uint8))[1].tobytes()
    assert header_size(encoded) == (53, 37)
    assert header_size(b"not an image") is None


@pytest.mark.parametrize("data", [png_claiming(100_000, 100_000), jpeg_claiming(60_000, 60_000)])
def test_an_image_claiming_too_many_pixels_is_one_error_naming_its_size(data):
    # The same on OpenCV 5 (which raises cv2.error) and OpenCV 4 (which returns None).
    width, height = header_size(data)
    assert width * height > MAX_IMAGE_PIXELS
    with pytest.raises(LeanEyeError, match=rf"^huge\.img: header claims {width}x{height} pixels"):
        decode_image(data, "huge.img")


def test_an_opencv_exception_is_one_error_and_opencv_logs_nothing(capfd):
    with pytest.raises(
        LeanEyeError, match=r"^frame 3: not a readable image \(OpenCV: pixels <= CV_IO_MAX_IMAGE_PIXELS\)$"
    ):
        decode_image(tiff_claiming(100_000, 100_000), "frame 3")
    assert capfd.readouterr().err == ""


def test_detect_on_a_folder_with_an_oversized_image_is_one_line(tmp_path, capfd):
    folder = tmp_path / "frames"
    folder.mkdir()
    image(folder / "a.png")
    (folder / "b.png").write_bytes(png_claiming(100_000, 100_000))
    assert leaneye_main(["detect", "--engine", ENGINE, str(folder)]) == 2
    # One line, and no "[ WARN ]" of OpenCV's own before it.
    assert error_lines(capfd) == [
        f"leaneye: error: {folder / 'b.png'}: header claims 100000x100000 pixels, over the {MAX_IMAGE_PIXELS} limit"
    ]


def test_an_oversized_compressed_frame_is_counted_and_skipped_by_replay(tmp_path, capfd):
    topic = "/camera/image_raw/compressed"
    source = tmp_path / "drive"
    frame = cv2.imencode(".jpg", np.full((12, 16, 3), 90, np.uint8))[1].tobytes()
    with bags.open_bag_writer(source) as writer:
        writer.add_topic(topic, msgs.COMPRESSED_IMAGE)
        for index, data in enumerate([frame, png_claiming(100_000, 100_000), frame]):
            stamp_ns = 1_000_000_000 + index * 100_000_000
            writer.write(topic, stamp_ns, msgs.compressed_image_msg(data, stamp_ns, "camera", fmt="png"))
    with bags.open_bag_reader(source) as reader:
        decoded = list(bags.iter_images(reader, topic))
    assert [isinstance(item, bags.FrameError) for item in decoded] == [False, True, False]
    assert "header claims 100000x100000 pixels" in decoded[1].reason
    out = tmp_path / "out.json"
    argv = ["replay", str(source), "--engine", ENGINE, "--topic", topic, "--no-eval", "--json", str(out)]
    assert leaneye_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 2 and report["bad_frames"] == 1
    assert "header claims 100000x100000 pixels" in report["bad_frame_reasons"][0]["reason"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_an_image_is_not_read(tmp_path, capfd):
    folder = tmp_path / "frames"
    folder.mkdir()
    good = image(folder / "a.png")
    fifo = folder / "b.jpg"
    os.mkfifo(fifo)
    assert image_paths([folder]) == [good]  # only regular files are images
    # A subprocess with a timeout: reading a FIFO nobody writes to would block forever.
    command = [sys.executable, "-m", "leaneye.cli", "detect", "--engine", ENGINE]
    ran = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    assert "a.png: " in ran.stdout and "b.jpg" not in ran.stdout
    named = subprocess.run([*command, str(fifo)], capture_output=True, text=True, timeout=120, check=False)
    assert named.returncode == 2
    assert named.stderr == f"leaneye: error: {fifo}: not a regular file (a FIFO or device?); expected an image file\n"


# --- labels -------------------------------------------------------------------------------------


def test_a_kitti_label_that_is_not_utf8_names_the_file(tmp_path, capfd):
    kitti = tmp_path / "kitti"
    (kitti / "image_2").mkdir(parents=True)
    (kitti / "label_2").mkdir()
    image(kitti / "image_2" / "000001.png")
    label = kitti / "label_2" / "000001.txt"
    label.write_bytes(b"Car 0.00 0 -1.58 \xff\xfe 10 20 30\n")
    with pytest.raises(LeanEyeError, match=rf"^{re.escape(str(label))}: not UTF-8 text \(byte 17\)"):
        kitti_ground_truth(kitti)
    assert leaneye_main(["eval", "--engine", ENGINE, "--kitti", str(kitti)]) == 2
    [line] = error_lines(capfd)
    assert line.startswith(f"leaneye: error: {label}: not UTF-8 text")


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "expected COCO JSON, an object with lists images, annotations and categories"),
        ('{"images": [], "annotations": {}, "categories": []}', "expected COCO JSON, an object with lists"),
        ("{", "not JSON at line 1"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (
            '{"images": [], "categories": [{"id": 1, "name": "car"}], "annotations": [{"id": 5, "image_id": 1, '
            '"category_id": 1}]}',
            "annotation 5: expected an object with image_id, known category_id and bbox",
        ),
        ('{"images": [], "categories": [], "annotations": [7]}', "annotation #1: expected an object"),
        ('{"images": [3], "categories": [], "annotations": []}', "image entry 3: expected id, file_name"),
        ('{"images": [], "categories": [1, 2], "annotations": []}', "expected COCO JSON, an object with lists"),
    ],
)
def test_coco_json_of_the_wrong_shape_names_the_file(tmp_path, content, message):
    path = tmp_path / "annotations.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LeanEyeError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)) as error:
        coco_ground_truth(path)
    assert "\n" not in str(error.value)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, option",
    [
        (["scenes", "--frames", "1", "--out", "{tmp}/s", "--rate", "nan"], "--rate"),
        (["scenes", "--frames", "1", "--out", "{tmp}/s", "--rate", "inf"], "--rate"),
        (["scenes", "--frames", "1", "--out", "{tmp}/s", "--size", "100000x100000"], "--size"),
        (["scenes", "--frames", "1", "--out", "{tmp}/s", "--size", "8193x10"], "--size"),
        (["detect", "--engine", ENGINE, "{tmp}", "--conf", "nan"], "--conf"),
        (["detect", "--engine", ENGINE, "{tmp}", "--iou=-inf"], "--iou"),
        (["detect", "--engine", ENGINE, "{tmp}", "--max-detections", "0"], "--max-detections"),
        (["bench", "overhead", "--engine", ENGINE, "{tmp}", "--conf", "1.5"], "--conf"),
        (["replay", "{tmp}", "--engine", ENGINE, "--conf", "nan"], "--conf"),
        (["replay", "{tmp}", "--engine", ENGINE, "--bootstrap", "-1"], "--bootstrap"),
        (["eval", "--engine", ENGINE, "--kitti", "{tmp}", "--bootstrap", "many"], "--bootstrap"),
        (["bag", "from-video", "v.mp4", "--out", "{tmp}/b", "--fps", "nan"], "--fps"),
        (["bag", "from-video", "v.mp4", "--out", "{tmp}/b", "--jpeg-quality", "101"], "--jpeg-quality"),
    ],
)
def test_out_of_range_options_are_one_line_before_any_work(tmp_path, capfd, argv, option):
    assert leaneye_main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    [line] = error_lines(capfd)
    assert line.startswith(f"leaneye: error: {option}") and "expected" in line, line
    assert list(tmp_path.iterdir()) == []


# --- the environment: a full disk, SIGTERM -------------------------------------------------------


def run_on_a_full_disk(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` (bash) run with a 32 kB tmpfs mounted on $FULL, in a user and mount namespace of its own:
    a real full file system without root. Skips where such namespaces are not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    full = tmp_path / "full"
    full.mkdir()
    mount = f"mount -t tmpfs -o size=32k tmpfs {full} || exit 77\n"
    ran = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", mount + script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "FULL": str(full)},
    )
    if ran.returncode == 77 or "unshare failed" in ran.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {ran.stderr.strip()}")
    return ran


WRITE_A_MEGABYTE = "import os, leaneye.atomic as a; a.atomic_write_bytes(os.environ['FULL'] + '/big.bin', bytes(10**6))"


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path):
    ran = run_on_a_full_disk(
        f"{sys.executable} -m leaneye.cli scenes --frames 3 --size 320x96 --out $FULL/scenes; echo rc=$?\n"
        f'{sys.executable} -c "{WRITE_A_MEGABYTE}" 2>&1 | tail -n 1\n'
        "echo left: $(ls -A $FULL)\n",
        tmp_path,
    )
    full = tmp_path / "full"
    [error] = [line for line in ran.stderr.splitlines() if line.startswith("leaneye: error:")]
    assert error.startswith(f"leaneye: error: {full}/scenes/") and error.endswith("(No space left on device)"), error
    assert ".tmp" not in error  # the output's own name, not its temporary's
    assert ran.stdout.splitlines() == [
        "rc=2",
        f"leaneye.errors.LeanEyeError: {full}/big.bin: cannot write (No space left on device)",
        "left:",  # nothing half-written
    ], ran.stdout + ran.stderr


def test_sigterm_during_replay_cleans_up_like_ctrl_c(tmp_path):
    """A real `leaneye replay` process sent SIGTERM (what `docker stop` and systemd send) once under way."""
    frames = 20000  # tiny frames: the run would last long, it is stopped well before
    topic = "/camera/image_raw"
    source = tmp_path / "long"
    pixels = np.full((*TINY_INPUT_HW, 3), 90, np.uint8)
    with bags.open_bag_writer(source) as writer:
        writer.add_topic(topic, msgs.IMAGE)
        for index in range(frames):
            stamp_ns = 1_000_000_000 + index * 50_000_000
            writer.write(topic, stamp_ns, msgs.image_msg(pixels, stamp_ns, "camera", encoding="bgr8"))
    out, report = tmp_path / "out", tmp_path / "replay.json"
    argv = ["replay", str(source), "--engine", ENGINE, "--out", str(out), "--json", str(report)]
    process = subprocess.Popen([sys.executable, "-m", "leaneye.cli", *argv], stderr=subprocess.PIPE)
    progress = b""
    try:
        # tqdm redraws its bar with carriage returns: read raw bytes until frames are being processed.
        while not re.search(rb"[1-9]\d*/%d" % frames, progress):
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, f"replay ended before it could be stopped: {progress.decode(errors='replace')}"
            progress += chunk
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, (progress + rest).decode(errors="replace")
    assert b"terminated; nothing half-written was left behind" in rest
    assert sorted(path.name for path in tmp_path.iterdir()) == ["long"]  # no output, no hidden temporary
