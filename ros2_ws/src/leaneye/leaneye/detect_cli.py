"""`leaneye detect`: run an engine on image files; `leaneye bench overhead`: what the runtime costs
around the backend's own inference call.

    leaneye detect --engine engines/yolox_nano frames/ extra.jpg --coco-json detections.json
    leaneye bench overhead --engine engines/yolox_nano ../shared/fixtures/kitti_tiny/image_2

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
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

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


def measure_overhead(detector, samples: list, runs: int) -> dict:
    """Median ms per frame of: image decoding, the backend's inference call, and everything else in
    `detect` (preprocess, postprocess, Python glue). `samples` are (path, encoded bytes, frame); they
    cycle in order, so the three are measured interleaved, under the same machine conditions."""
    from tqdm import tqdm

    timings: dict = {"decode": [], "inference": [], "outside": [], "preprocess": [], "postprocess": []}
    detector.detect(samples[0][2])  # the first call builds caches (grids, buffers): not a steady-state frame
    for run in tqdm(range(runs), desc="bench overhead", unit="frame", file=sys.stderr):
        path, data, frame = samples[run % len(samples)]
        start = time.perf_counter()
        decode_image(data, path)
        decoded = time.perf_counter()
        found = detector.detect(frame)
        done = time.perf_counter()
        timings["decode"].append((decoded - start) * 1e3)
        timings["outside"].append((done - decoded) * 1e3 - found.timings["inference"])
        for stage in ("inference", "preprocess", "postprocess"):
            timings[stage].append(found.timings[stage])
    result = {f"{stage}_ms": float(np.median(values)) for stage, values in timings.items()}
    result["outside_p90_ms"] = float(np.percentile(timings["outside"], 90))
    result["ratio"] = result["outside_ms"] / result["inference_ms"]
    result["runs"] = runs
    return result


def run_bench_overhead(args) -> int:
    from .detector import Detector

    if args.frames < 1:
        raise LeanEyeError(f"--frames: expected a positive number, got {args.frames}")
    if args.runs < MIN_BENCH_RUNS:
        raise LeanEyeError(f"--runs: expected at least {MIN_BENCH_RUNS} for a stable median, got {args.runs}")
    samples = [(path, *read_image(path)) for path in image_paths(args.sources)[:args.frames]]
    with Detector.from_engine(args.engine, conf=args.conf, iou=args.iou, threads=args.threads) as detector:
        result = measure_overhead(detector, samples, args.runs)
        input_h, input_w = detector.manifest.input.size
    sizes = sorted({f"{frame.shape[1]}x{frame.shape[0]}" for _, _, frame in samples})
    print(f"{args.engine} ({input_w}x{input_h} input) on {len(samples)} frames ({', '.join(sizes[:5])}"
          f"{', ...' if len(sizes) > 5 else ''}), median of {result['runs']} runs:")
    print(f"  outside the inference call  {result['outside_ms']:.3f} ms  (p90 {result['outside_p90_ms']:.3f}; "
          f"preprocess {result['preprocess_ms']:.3f}, postprocess {result['postprocess_ms']:.3f})")
    print(f"  inference call              {result['inference_ms']:.3f} ms")
    print(f"  ratio outside / inference   {result['ratio']:.3f}")
    print(f"  image decoding (separate)   {result['decode_ms']:.3f} ms")
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
                          help="image files and/or directories of images (bags are not read here yet)")
    overhead.add_argument("--frames", type=int, default=50, help="use at most this many distinct frames")
    overhead.add_argument("--runs", type=int, default=MIN_BENCH_RUNS, help="frames timed in total (cycling)")
    _add_detection_options(overhead)
    overhead.set_defaults(func=run_bench_overhead)


def _add_detection_options(parser) -> None:
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = the backend's default)")
