"""`leaneye detect`: run an engine on image files; `leaneye bench overhead`: what the runtime costs
around the backend's own inference call.

    leaneye detect --engine engines/yolox_nano frames/ extra.jpg --coco-json detections.json
    leaneye bench overhead --engine engines/yolox_nano ../shared/fixtures/kitti_tiny/image_2
    leaneye bench overhead --engine engines/yolox_nano drive_bag --topic /camera/image_raw --runs 400

`--coco-json` file (UTF-8 JSON object):

    {
      "images":      [{"id": 1, "file_name": "frames/000001.jpeg", "width": 1242, "height": 375}, ...],
      "annotations": [{"id": 1, "image_id": 1, "file_name": "frames/000001.jpeg",
                       "category_id": 3, "category_name": "car",
                       "bbox": [x, y, width, height], "area": width * height, "score": 0.91}, ...],
      "categories":  [{"id": 1, "name": "person"}, ...]
    }

Image ids count from 1 in the order the images were processed. category_id is the engine's class
index + 1 and "categories" lists every class of the engine. Boxes are in original image pixels
(COCO convention: top-left corner, width, height). "annotations" is at the same time a COCO
results list (image_id, category_id, bbox, score) for pycocotools' `loadRes`.

`bench overhead` takes image files, directories of images and rosbag2 bags (raw or compressed
image topic). The first `--frames` frames come in turn, each decoded afresh every time, as a node
receives it; `--runs` frames are timed (median, at least 200). Per frame it reports preprocess
(letterbox into the input tensor), the inference call (ONNX Runtime's `session.run`), postprocess
(decoding, NMS, boxes back to frame pixels), glue (the rest of `detect`), their sum outside the
inference call and its ratio to the call; the decoding of the file or message is reported apart.

Measured on YOLOX-Nano (416x416), the demo bag's 1224x370 bgr8 frames, ONNX Runtime CPU with
its default 2 threads, 50 frames in turn, median of 400, on a 2-core AMD EPYC VM with nothing else
running: 0.39 ms outside the inference call (preprocess 0.20-0.21, postprocess 0.17, glue 0.01;
p90 0.44) next to 4.6 ms in the call, a ratio of 0.085; with 1 thread 0.43 ms next to 7.8 ms. The
50 KITTI JPEGs (1224-1242 x 370-376): 0.37 ms outside, JPEG decoding 1.3 ms apart. The default
model's engine (640x192, scaled input): 0.69 ms outside next to 5.3 ms.

Right after inference the caches no longer hold the Python and NumPy code, so each distinct NumPy
or Python call costs 2-15 us however small its arrays (the same postprocess takes about 0.02 ms
back to back, 0.2 ms after a `session.run`). What is left: the resize, which reads most of the
1.4 MB frame (0.12-0.15 ms), the converting copy into the float tensor (0.03), the first NumPy
call on the output with its scan of the 3549 objectness scores (0.04), the rest of decoding
(0.06) and NMS (0.05). Interleaved in one process on the same frames and one ONNX Runtime
session, the previous implementation (NumPy NMS, per-frame decoder lookups, float64 scaling)
took 0.445 ms outside where this one takes 0.407 (postprocess 0.218 against 0.181), and on the
default model's engine 0.794 against 0.693 ms. Timings on this shared VM drift by up to a
third from hour to hour (the previous implementation measured 0.55 ms outside next to 9.2 ms in the call on a
busier day), so compare figures from one run.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .atomic import atomic_write_text, check_output_path
from .errors import LeanEyeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MIN_BENCH_RUNS = 200


def image_paths(sources: list[Path]) -> list[Path]:
    """Image files named directly, plus the images in named directories (sorted by name)."""
    paths = []
    for source in sources:
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise LeanEyeError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
            paths.extend(found)
        elif source.is_file():
            paths.append(source)
        else:
            raise LeanEyeError(f"{source}: no such image file or directory")
    return paths


def decode_image(data: bytes, path: Path) -> np.ndarray:
    import cv2

    if not data:
        raise LeanEyeError(f"{path}: empty file; expected an image ({', '.join(IMAGE_SUFFIXES)})")
    frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise LeanEyeError(f"{path}: not a readable image")
    return frame


def read_image(path: Path) -> tuple[bytes, np.ndarray]:
    """The file's bytes (the compressed frame) and the decoded BGR frame."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LeanEyeError(f"{path}: cannot read ({exc.strerror})") from None
    return data, decode_image(data, path)


def coco_results(records: list) -> dict:
    """COCO images/annotations/categories from (path, Detections) records (format in the module docstring)."""
    images, annotations = [], []
    class_names: tuple = ()
    for image_id, (path, found) in enumerate(records, 1):
        height, width = found.image_size
        images.append({"id": image_id, "file_name": str(path), "width": int(width), "height": int(height)})
        class_names = found.class_names
        for box, score, class_id in zip(found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "file_name": str(path),
                                "category_id": class_id + 1, "category_name": found.class_names[class_id],
                                "bbox": [round(v, 2) for v in (box[0], box[1], w, h)], "area": round(w * h, 2),
                                "score": round(score, 5)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def summary_line(path: Path, found) -> str:
    counts: dict = {}
    for name in found.names:
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    total_ms = sum(found.timings.values())
    return f"{path}: {len(found)} detections{' (' + listed + ')' if listed else ''}, {total_ms:.1f} ms"


def run_detect(args) -> int:
    from tqdm import tqdm

    from .detector import Detector

    if args.coco_json is not None:
        check_output_path(args.coco_json, args.force, "--coco-json")
    paths = image_paths(args.images)
    records = []
    with Detector.from_engine(args.engine, conf=args.conf, iou=args.iou, max_detections=args.max_detections,
                              class_agnostic=args.agnostic, threads=args.threads) as detector:
        for path in tqdm(paths, desc="detect", unit="image", file=sys.stderr, disable=len(paths) < 10):
            found = detector.detect(read_image(path)[1])
            records.append((path, found))
            tqdm.write(summary_line(path, found), file=sys.stdout)
    if args.coco_json is not None:
        atomic_write_text(args.coco_json, json.dumps(coco_results(records)) + "\n")
        print(f"{args.coco_json}: {sum(len(found) for _, found in records)} detections on {len(records)} images")
    return 0


class BenchFrame(NamedTuple):
    image: np.ndarray  # BGR uint8, decoded just now
    decode_ms: float  # file or message to BGR pixels


def is_bag(source: Path) -> bool:
    """A rosbag2 folder or storage file, as `leaneye.bags.open_bag_reader` takes them."""
    from .bags import STORAGE_SUFFIXES

    if source.is_dir():
        return (source / "metadata.yaml").is_file() or any(p.suffix in STORAGE_SUFFIXES for p in source.iterdir())
    return source.suffix in STORAGE_SUFFIXES


class FrameCycle:
    """Endless benchmark frames: the first `frames` frames of `sources` (image files, directories
    of images, bags' image `topic`) in order, round and round.

    Each frame is decoded again every time it comes up, as a node would receive it: a fresh frame
    in memory, neither kept warm nor gone cold in a list. Bags stay open in `stack`.
    """

    def __init__(self, sources: list[Path], topic: str, frames: int, stack: contextlib.ExitStack):
        from .bags import find_image_topic, open_bag_reader

        self.frames = frames
        self.distinct = 0  # frames in one round, known once the first round is done
        self.bad_frames: set = set()  # (bag, topic, message index) of bag messages that do not decode
        self.described: list[str] = []
        self._rounds: list = []  # per source, a function that starts one pass over its frames
        for source in sources:
            if is_bag(source):
                reader = stack.enter_context(open_bag_reader(source))
                topic_found = find_image_topic(reader.topics, topic)
                self._rounds.append(functools.partial(self._bag_pass, reader, topic_found))
                self.described.append(f"{source} {topic_found}")
            else:
                # Read (and check) once; decoded on every pass.
                files = [(path, read_image(path)[0]) for path in image_paths([source])[:frames]]
                self._rounds.append(functools.partial(self._image_file_pass, files))
                self.described.append(str(source) if len(files) == 1 else f"{source} ({len(files)} images)")
        self._frames = self._endless()

    def __iter__(self) -> Iterator[BenchFrame]:
        return self

    def __next__(self) -> BenchFrame:
        return next(self._frames)

    def _endless(self) -> Iterator[BenchFrame]:
        while True:
            count = 0
            for start_pass in self._rounds:
                with contextlib.closing(start_pass()) as one_pass:
                    for frame in itertools.islice(one_pass, self.frames - count):
                        count += 1
                        yield frame
                if count == self.frames:
                    break
            if count == 0:
                raise LeanEyeError(f"{'; '.join(self.described)}: no frame decodes")
            self.distinct = count

    @staticmethod
    def _image_file_pass(files: list) -> Iterator[BenchFrame]:
        for path, data in files:
            started = time.perf_counter()
            image = decode_image(data, path)
            yield BenchFrame(image, (time.perf_counter() - started) * 1e3)

    def _bag_pass(self, reader, topic: str) -> Iterator[BenchFrame]:
        from .bags import FrameError, iter_images

        for item in iter_images(reader, topic):
            if isinstance(item, FrameError):
                self.bad_frames.add((str(reader.path), topic, item.index))
                continue
            yield BenchFrame(item.image, item.decode_ms)


def measure_overhead(detector, frames: Iterator[BenchFrame], runs: int) -> dict:
    """Medians over `runs` frames (ms): decoding, preprocess, the inference call, postprocess, glue
    (the rest of `detect`) and everything outside the inference call, all measured on the same
    frame in every run, so that they share the machine's state."""
    from tqdm import tqdm

    detector.detect(next(frames).image)  # the first call builds caches (grids, buffers): not a steady-state frame
    stages: dict = {name: [] for name in ("decode", "preprocess", "inference", "postprocess", "glue", "outside")}
    sizes: set = set()
    for _ in tqdm(range(runs), desc="bench overhead", unit="frame", file=sys.stderr):
        frame = next(frames)
        start = time.perf_counter()
        found = detector.detect(frame.image)
        total_ms = (time.perf_counter() - start) * 1e3
        timings = found.timings
        outside_ms = total_ms - timings["inference"]
        stages["decode"].append(frame.decode_ms)
        stages["outside"].append(outside_ms)
        stages["glue"].append(outside_ms - timings["preprocess"] - timings["postprocess"])
        for name in ("preprocess", "inference", "postprocess"):
            stages[name].append(timings[name])
        sizes.add(frame.image.shape[1::-1])
    result = {f"{name}_ms": float(np.median(values)) for name, values in stages.items()}
    result["outside_p90_ms"] = float(np.percentile(stages["outside"], 90))
    result["ratio"] = result["outside_ms"] / result["inference_ms"]
    result["runs"] = runs
    result["sizes"] = sorted(sizes)
    return result


def run_bench_overhead(args) -> int:
    from .detector import Detector

    if args.frames < 1:
        raise LeanEyeError(f"--frames: expected a positive number, got {args.frames}")
    if args.runs < MIN_BENCH_RUNS:
        raise LeanEyeError(f"--runs: expected at least {MIN_BENCH_RUNS} for a stable median, got {args.runs}")
    with contextlib.ExitStack() as stack:
        frames = FrameCycle(args.sources, args.topic, args.frames, stack)
        detector = stack.enter_context(Detector.from_engine(args.engine, conf=args.conf, iou=args.iou,
                                                            threads=args.threads))
        result = measure_overhead(detector, frames, args.runs)
        input_h, input_w = detector.manifest.input.size
    distinct = f"{frames.distinct} frames" if frames.distinct else f"the first {args.runs + 1} frames"
    sizes = ", ".join(f"{width}x{height}" for width, height in result["sizes"][:5])
    print(f"{args.engine} ({input_w}x{input_h} input) on {distinct} of {'; '.join(frames.described)}")
    print(f"  frame size {sizes}{', ...' if len(result['sizes']) > 5 else ''}; median of {result['runs']} runs, "
          f"frames in turn")
    if frames.bad_frames:
        print(f"  skipped {len(frames.bad_frames)} bag messages that do not decode")
    print(f"  preprocess                     {result['preprocess_ms']:8.3f} ms")
    print(f"  postprocess                    {result['postprocess_ms']:8.3f} ms")
    print(f"  glue                           {result['glue_ms']:8.3f} ms")
    print(f"  outside the inference call     {result['outside_ms']:8.3f} ms  (p90 {result['outside_p90_ms']:.3f})")
    print(f"  inference call (session.run)   {result['inference_ms']:8.3f} ms")
    print(f"  ratio outside / inference      {result['ratio']:8.3f}")
    print(f"  image decoding (separate)      {result['decode_ms']:8.3f} ms")
    return 0


def register(subparsers) -> None:
    detect = subparsers.add_parser("detect", help="detect objects in images with an engine",
                                   description="Run an engine on image files or directories of images; print a "
                                               "summary per image and optionally write COCO-style JSON results.")
    detect.add_argument("--engine", required=True, type=Path, help="engine directory (model + manifest.json)")
    detect.add_argument("images", nargs="+", type=Path, help="image files and/or directories of images")
    detect.add_argument("--coco-json", type=Path, help="write detections here (format: see `pydoc leaneye.detect_cli`)")
    detect.add_argument("--force", action="store_true", help="replace an existing --coco-json file")
    _add_detection_options(detect)
    detect.add_argument("--max-detections", type=int, default=300, help="at most this many per image")
    detect.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    detect.set_defaults(func=run_detect)

    bench = subparsers.add_parser("bench", help="benchmarks of the runtime")
    kinds = bench.add_subparsers(dest="bench", required=True)
    overhead = kinds.add_parser("overhead", help="time per frame spent outside the backend's inference call",
                                description="Median per-frame time of preprocess + postprocess + glue around the "
                                            "inference call, the call itself, and image decoding (reported apart).")
    overhead.add_argument("--engine", required=True, type=Path, help="engine directory (model + manifest.json)")
    overhead.add_argument("sources", nargs="+", type=Path,
                          help="image files, directories of images and/or rosbag2 bags (folder, .mcap or .db3)")
    overhead.add_argument("--topic", default="/camera/image_raw",
                          help="image topic of bags; an absent raw topic falls back to <topic>/compressed and back "
                               "(default: %(default)s)")
    overhead.add_argument("--frames", type=int, default=50, help="use at most this many distinct frames")
    overhead.add_argument("--runs", type=int, default=MIN_BENCH_RUNS, help="frames timed in total (cycling)")
    _add_detection_options(overhead)
    overhead.set_defaults(func=run_bench_overhead)


def _add_detection_options(parser) -> None:
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = the backend's default)")
