"""Frames in, detections out: preprocessing (`leaneye.vision.preprocess`), backend inference,
postprocessing (`leaneye.vision.postprocess`), each timed.

    detector = Detector.from_engine("engines/yolox_nano", conf=0.25)
    detections = detector.detect(frame_bgr)   # (H, W, 3) uint8
    detections.boxes, detections.scores, detections.class_ids, detections.names, detections.timings

How the per-frame work outside the backend is kept small: `leaneye.vision.preprocess` and
`leaneye.vision.postprocess`. A backend on a GPU may offer all three stages on its device
(`Backend.device_pipeline`); the Detector then uses those instead (docs/gpu-pipeline.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .backends import Backend, BackendOptions, load_backend
from .engine import Manifest, load_manifest, model_file
from .errors import LeanEyeError
from .vision.detections import Detections
from .vision.letterbox import LetterboxTransform
from .vision.postprocess import DEFAULT_SETTINGS, DetectionSettings, NonFiniteOutputs, Postprocessor
from .vision.preprocess import InputTensor, check_frame

__all__ = ["Detections", "DetectionSettings", "Detector", "NonFiniteOutputs", "OutputsDoNotFit"]


class OutputsDoNotFit(LeanEyeError):
    """The decoder rejected the model's outputs; `detail` is its complaint. Callers that know where the
    decoder and class names came from (a manifest, import's flags) say so in their own message."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(f"the engine's decoder and class names do not fit the model's outputs: {detail}")


class Detector:
    """A configured engine: preprocessing + backend + postprocessing; `activate()` before `detect`."""

    def __init__(self, manifest: Manifest, backend: Backend, settings: DetectionSettings = DEFAULT_SETTINGS):
        self.manifest = manifest
        self.backend = backend
        self.postprocessor = Postprocessor(manifest, settings)
        self.input = InputTensor(manifest.input, manifest.letterbox_align, manifest.letterbox_pad_value)
        self.on_device = backend.device_pipeline(manifest, settings)  # None: the CPU stages above
        # The last frame's backend outputs, letterbox transform and size, for `redetect`.
        self._last: tuple | None = None

    @classmethod
    def from_engine(
        cls,
        engine_dir: Path | str,
        conf: float = 0.25,
        iou: float = 0.45,
        max_detections: int = 300,
        class_agnostic: bool = False,
        threads: int = 0,
        device: str | None = None,
        extra: dict | None = None,
    ) -> Detector:
        """Load, check and activate the engine in `engine_dir`; `threads` 0 = the backend's default,
        `device` None = the backend's default device, `extra` = backend-specific options."""
        settings = DetectionSettings(conf, iou, max_detections, class_agnostic)
        manifest = load_manifest(engine_dir)
        backend = load_backend(
            manifest.backend,
            model_file(engine_dir, manifest),
            manifest.input.name,
            manifest.input.shape,
            BackendOptions(threads=threads, device=device, extra=dict(extra or {})),
            manifest.target,
        )
        detector = cls(manifest, backend, settings)
        try:
            detector.activate()
        except OutputsDoNotFit as exc:
            raise LeanEyeError(
                f"{Path(engine_dir) / 'manifest.json'}: fields 'decoder' and 'class_names' do not fit the model's "
                f"outputs: {exc.detail}"
            ) from None
        except NonFiniteOutputs as exc:
            raise LeanEyeError(f"{Path(engine_dir) / manifest.model}: {exc}") from None
        return detector

    @property
    def settings(self) -> DetectionSettings:
        return self.postprocessor.settings

    def update_settings(self, settings: DetectionSettings) -> None:
        """New thresholds from the next frame on (the detector node's live parameters): the postprocessor
        is replaced whole, so a frame in progress finishes with the old one."""
        self.postprocessor = Postprocessor(self.manifest, settings)
        if self.on_device is not None:
            self.on_device = self.backend.device_pipeline(self.manifest, settings)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    def activate(self) -> None:
        """Allocate the backend and run it once on a blank input. The first camera frame then does not
        pay for the runtime's first-run set-up, and outputs that do not fit the manifest's decoder or
        class names (OutputsDoNotFit), or that are NaN or infinite (NonFiniteOutputs), fail here
        rather than on that frame."""
        self.backend.activate()
        try:
            self._check_outputs()
        except BaseException:
            self.backend.deactivate()
            raise

    def _check_outputs(self) -> None:
        # A backend failure keeps its own message; only a decoder's complaint concerns the manifest.
        outputs = self.backend.infer(np.zeros(self.manifest.input.shape, np.dtype(self.manifest.input.dtype)))
        for index, output in enumerate(outputs):
            if not np.isfinite(output).all():
                raise NonFiniteOutputs(f"output {index} holds NaN or infinite values on a blank input")
        try:
            self.postprocessor.decode(outputs)
        except LeanEyeError as exc:
            raise OutputsDoNotFit(str(exc)) from None

    def deactivate(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    def preprocess(self, frame: np.ndarray) -> LetterboxTransform:
        """Write `frame` into the input tensor (`self.input.tensor`); returns the letterbox transform."""
        check_frame(frame)
        return self.input.fill(frame)

    def detect(self, frame: np.ndarray) -> Detections:
        """Detect objects in one BGR uint8 frame (H, W, 3): on the CPU around the backend's `infer`, or
        on the backend's device when it offers that (synchronised after each stage, a few microseconds,
        so that each stage's time is its own)."""
        on_device = self.on_device
        start = time.perf_counter()
        if on_device is None:
            transform = self.preprocess(frame)
            preprocessed = time.perf_counter()
            outputs = self.backend.infer(self.input.tensor)
        else:
            check_frame(frame)
            tensor, transform = on_device.preprocess(frame)
            on_device.synchronize()
            preprocessed = time.perf_counter()
            outputs = on_device.infer(tensor)
            on_device.synchronize()
        inferred = time.perf_counter()
        image_size = frame.shape[:2]
        self._last = (outputs, transform, image_size)
        postprocess = self.postprocessor.run if on_device is None else on_device.postprocess
        boxes, scores, class_ids = postprocess(outputs, transform, image_size)
        done = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - start) * 1e3,
            "inference": (inferred - preprocessed) * 1e3,
            "postprocess": (done - inferred) * 1e3,
        }
        return Detections(boxes, scores, class_ids, self.class_names, image_size, timings)

    def redetect(self, postprocessor: Postprocessor) -> Detections:
        """The last frame's detections by another postprocessor (other settings), from the same backend
        outputs: no second inference. Timings: its postprocess only."""
        if self._last is None:
            raise LeanEyeError("redetect: no frame has been detected yet")
        start = time.perf_counter()
        outputs, transform, image_size = self._last
        if self.on_device is not None:
            outputs = self.on_device.to_host(outputs)
        boxes, scores, class_ids = postprocessor.run(outputs, transform, image_size)
        timings = {"postprocess": (time.perf_counter() - start) * 1e3}
        return Detections(boxes, scores, class_ids, self.class_names, self._last[2], timings)
