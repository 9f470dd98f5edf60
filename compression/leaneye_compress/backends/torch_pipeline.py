"""The vehicle's CPU pre- and post-processing done with torch ops on any device, so that a model run
by PyTorch on a GPU keeps its frame and outputs there until the detections: one upload of the frame,
one download of the kept boxes.

The same work as `leaneye.vision.preprocess.InputTensor.fill` (letterbox, colour order, scaling)
and `leaneye.vision.postprocess.Postprocessor.run` (decode, greedy NMS, back to frame pixels), with
the same letterbox geometry, score-threshold semantics, NMS conventions and error messages; the
comparison with the CPU path is tests/offline/test_torch_pipeline.py, the design docs/gpu-pipeline.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from leaneye.engine import Manifest
from leaneye.errors import LeanEyeError
from leaneye.vision.decoders import DECODERS, DecodeParams, yolox_grid
from leaneye.vision.letterbox import LetterboxTransform, letterbox_transform
from leaneye.vision.postprocess import DetectionSettings, NonFiniteOutputs
from leaneye.vision.preprocess import check_frame

# Only this many of the best-scoring candidates take part in NMS: its IoU matrix grows with the square
# of their number (4096 candidates: 64 MiB of float32 per temporary). The CPU path has no cap; the
# project's models have fewer rows than this in all (LeanDet at 192x640: 2520; YOLOX at 416x416: 3549),
# so only larger grids (Ultralytics or YOLOX at 640x640: 8400 rows) at evaluation's conf 0.001 can reach it.
MAX_NMS_CANDIDATES = 4096

Candidates = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TorchPipeline:
    """Letterbox + normalisation and decode + NMS with torch on `device`.

    `preprocess(frame)` gives the (1, 3, H, W) network input on the device, in `input_dtype` (default:
    the manifest's input dtype), and the frame's LetterboxTransform; the tensor is the pipeline's own
    and the next frame overwrites it, like `InputTensor.tensor`. `postprocess(outputs, transform,
    image_size)` gives host arrays like `Postprocessor.run`: float32 (K, 4) boxes in frame pixels,
    float32 (K,) scores, int64 (K,) class ids, highest score first, at most `max_detections`; only the
    MAX_NMS_CANDIDATES best candidates take part in NMS.
    """

    def __init__(
        self,
        manifest: Manifest,
        settings: DetectionSettings,
        device: torch.device,
        input_dtype: torch.dtype | None = None,
    ):
        spec = manifest.input
        self.manifest = manifest
        self.settings = settings
        self.device = torch.device(device)
        self.input_dtype = input_dtype if input_dtype is not None else getattr(torch, spec.dtype)
        self.tensor = torch.empty(spec.shape, dtype=self.input_dtype, device=self.device)
        std = np.asarray(spec.std if spec.std is not None else (1.0, 1.0, 1.0), dtype=np.float64)
        mean = np.asarray(spec.mean if spec.mean is not None else (0.0, 0.0, 0.0), dtype=np.float64)
        # tensor = (pixel * scale - mean) / std = pixel * gain + offset per network channel, in float32
        # like InputTensor's factors, so that both paths round alike.
        self.gain = self._per_channel(spec.scale / std)
        self.offset = self._per_channel(-mean / std)
        self.rgb = spec.color == "rgb"
        # Set per frame size by _prepare: the transform, the host staging buffer (pinned on CUDA) and
        # the frame's place on the device (the staging buffer itself on the CPU), the region of
        # `tensor` the resized frame goes to. Outside the region `tensor` always holds padding.
        self.image_size: tuple[int, int] | None = None
        self.transform: LetterboxTransform | None = None
        self.staging: np.ndarray | None = None
        self.staging_tensor: torch.Tensor | None = None
        self.device_frame: torch.Tensor | None = None
        self.region: torch.Tensor | None = None
        # On CUDA the staging buffer is reused only once the previous frame's copy has left it.
        self.copied = torch.cuda.Event() if self.device.type == "cuda" else None

        params = DecodeParams(
            input_size=spec.size,
            num_classes=len(manifest.class_names),
            score_threshold=settings.conf,
            **{k: tuple(v) for k, v in manifest.decoder_params.items()},  # strides
        )
        decoder = DECODERS[manifest.decoder]
        self.runs_nms = decoder.runs_nms
        # The CPU decoder checks the outputs' shapes (and so words their errors) on zeros of the same
        # shapes, once per distinct shapes: an engine's outputs keep theirs.
        self.check_shapes = decoder.build(params)
        self.checked_shapes: set = set()
        self.decode = _DECODERS[manifest.decoder](params, self.device)

    def _per_channel(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.float32).reshape(1, 3, 1, 1)).to(self.device)

    def _prepare(self, image_size: tuple[int, int]) -> None:
        """New frame size: new transform and buffers; the whole input becomes padding again."""
        transform = letterbox_transform(image_size, self.manifest.input.size, self.manifest.letterbox_align)
        self.tensor.copy_((self.manifest.letterbox_pad_value * self.gain + self.offset).expand_as(self.tensor))
        self.region = self.tensor[
            :,
            :,
            transform.pad_y : transform.pad_y + transform.height,
            transform.pad_x : transform.pad_x + transform.width,
        ]
        self.staging_tensor = torch.empty((*image_size, 3), dtype=torch.uint8, pin_memory=self.copied is not None)
        self.staging = self.staging_tensor.numpy()
        on_host = self.device.type == "cpu"
        self.device_frame = (
            self.staging_tensor if on_host else torch.empty_like(self.staging_tensor, device=self.device)
        )
        self.transform = transform
        self.image_size = image_size

    def _upload(self, frame: np.ndarray) -> torch.Tensor:
        """The frame as an (H, W, 3) uint8 tensor on the device (copied whatever its strides or writability)."""
        if self.copied is not None:
            self.copied.synchronize()
        np.copyto(self.staging, frame)
        if self.device_frame is not self.staging_tensor:  # else the CPU device, which has the frame now
            self.device_frame.copy_(self.staging_tensor, non_blocking=self.copied is not None)
        if self.copied is not None:
            self.copied.record(torch.cuda.current_stream(self.device))
        return self.device_frame

    def preprocess(self, frame: np.ndarray) -> tuple[torch.Tensor, LetterboxTransform]:
        """Letterbox the BGR uint8 `frame` into the network input: (the input tensor, the transform)."""
        check_frame(frame)
        if frame.shape[:2] != self.image_size:
            self._prepare(frame.shape[:2])
        planes = self._upload(frame).permute(2, 0, 1)
        if self.rgb:
            planes = planes.flip(0)
        transform = self.transform
        resized = F.interpolate(
            planes.unsqueeze(0).float(),
            size=(transform.height, transform.width),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        # cv2.resize writes uint8: rounding keeps the pixel levels the CPU path gives the network.
        resized.round_()
        self.region.copy_(resized.mul_(self.gain).add_(self.offset))
        return self.tensor, transform

    def postprocess(
        self, outputs: list[torch.Tensor], transform: LetterboxTransform, image_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode, suppress and map back to frame pixels on the device, then one copy to the host:
        (boxes, scores, class_ids)."""
        shapes = tuple(tuple(output.shape) for output in outputs)
        if shapes not in self.checked_shapes:
            self.check_shapes([np.zeros(shape, np.float32) for shape in shapes])
            self.checked_shapes.add(shapes)
        boxes, scores, class_ids = self.decode(outputs[0][0].to(self.device, torch.float32))
        # NaN scores never pass the threshold; a NaN box or an infinite score would reach the output.
        if not torch.isfinite(boxes.sum() + scores.sum()):
            bad = int((~(torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores))).sum())
            raise NonFiniteOutputs(
                f"the model's outputs give NaN or infinite boxes or scores ({bad} of {len(scores)} candidates)"
            )
        settings = self.settings
        if self.runs_nms:
            keep = nms(boxes, scores, class_ids, settings.iou, settings.class_agnostic, settings.max_detections)
        else:
            keep = torch.sort(scores, descending=True, stable=True).indices[: settings.max_detections]
        kept = boxes[keep]
        kept[:, 0::2] -= transform.pad_x
        kept[:, 1::2] -= transform.pad_y
        kept *= 1.0 / transform.scale
        height, width = image_size
        kept[:, 0::2].clamp_(0, width)
        kept[:, 1::2].clamp_(0, height)
        # One copy for all three (class ids < 2**24 are exact in float32).
        found = torch.cat([kept, scores[keep, None], class_ids[keep, None].float()], dim=1).cpu().numpy()
        return np.ascontiguousarray(found[:, :4]), found[:, 4].copy(), found[:, 5].astype(np.int64)


def nms(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor,
    iou_threshold: float,
    class_agnostic: bool = False,
    max_detections: int = 300,
) -> torch.Tensor:
    """Indices (int64, on the boxes' device) of the boxes greedy NMS keeps, highest score first, at
    most `max_detections`, with `leaneye.vision.nms.nms`'s conventions: suppressed by a higher-scoring
    kept box (of the same class unless `class_agnostic`) whose IoU with it is strictly greater than
    `iou_threshold`; equal scores keep input order; a score of 0 is never kept; two empty boxes count
    as identical. Only the MAX_NMS_CANDIDATES best candidates take part.
    """
    order = torch.sort(scores, descending=True, stable=True).indices[:MAX_NMS_CANDIDATES]
    x1, y1, x2, y2 = boxes_xyxy[order].unbind(dim=1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    overlap_w = (torch.minimum(x2[:, None], x2) - torch.maximum(x1[:, None], x1)).clamp_(min=0)
    overlap_h = (torch.minimum(y2[:, None], y2) - torch.maximum(y1[:, None], y1)).clamp_(min=0)
    intersections = overlap_w.mul_(overlap_h)
    area_sums = areas[:, None] + areas
    ious = torch.where(area_sums > 0, intersections / (area_sums - intersections), 1.0)
    # suppresses[i, j]: candidate i, ranked before j, suppresses j if i is kept.
    suppresses = (ious > iou_threshold).triu_(diagonal=1)
    if not class_agnostic:
        ranked_classes = class_ids[order]
        suppresses &= ranked_classes[:, None] == ranked_classes
    candidates = scores[order] > 0
    # Greedy keeps j iff no kept i < j suppresses it: keep[j] = candidates[j] & ~any_i(suppresses[i, j]
    # & keep[i]). keep[j] depends only on earlier entries, so this has one solution, greedy's. Iterating
    # the equation from keep = candidates, an entry is final one pass after every entry it depends on
    # is: the first is final at once, and each pass settles at least one more link of the longest
    # suppression chain. An iterate that no longer changes solves the equation: it is greedy's keep.
    keep = candidates
    while True:
        updated = candidates & ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(updated, keep):
            return order[keep][:max_detections]
        keep = updated


def _builtin(params: DecodeParams, device: torch.device) -> Callable[[torch.Tensor], Candidates]:
    threshold = params.score_threshold

    def decode_builtin(out: torch.Tensor) -> Candidates:
        scores, class_ids = out[:, 4:].max(dim=1)
        passed = (scores >= threshold).nonzero().squeeze(1)
        return out[passed, :4], scores[passed], class_ids[passed]

    return decode_builtin


def _yolox(params: DecodeParams, device: torch.device) -> Callable[[torch.Tensor], Candidates]:
    threshold = params.score_threshold
    cells, cell_strides = yolox_grid(tuple(params.input_size), tuple(params.strides))
    # Per cell: x, y, stride, stride / 2, as the CPU decoder's table.
    table = torch.from_numpy(np.concatenate([cells, cell_strides, cell_strides * 0.5], axis=1)).to(device)

    def decode_yolox(out: torch.Tensor) -> Candidates:
        class_scores, class_ids = out[:, 5:].max(dim=1)
        scores = class_scores * out[:, 4]
        passed = ((out[:, 4] >= threshold) & (scores >= threshold)).nonzero().squeeze(1)
        rows, cell = out[passed], table[passed]
        centres = (rows[:, :2] + cell[:, :2]) * cell[:, 2:3]
        half = torch.exp(rows[:, 2:4]) * cell[:, 3:]
        return torch.cat([centres - half, centres + half], dim=1), scores[passed], class_ids[passed]

    return decode_yolox


def _ultralytics(params: DecodeParams, device: torch.device) -> Callable[[torch.Tensor], Candidates]:
    threshold = params.score_threshold

    def decode_ultralytics(out: torch.Tensor) -> Candidates:
        scores, class_ids = out[4:].max(dim=0)
        passed = (scores >= threshold).nonzero().squeeze(1)
        centres, sizes = out[:2, passed].T, out[2:4, passed].T
        half = sizes * 0.5
        return torch.cat([centres - half, centres + half], dim=1), scores[passed], class_ids[passed]

    return decode_ultralytics


def _end2end(params: DecodeParams, device: torch.device) -> Callable[[torch.Tensor], Candidates]:
    threshold = params.score_threshold

    def decode_end2end(out: torch.Tensor) -> Candidates:
        rows = out[(out[:, 4] >= threshold).nonzero().squeeze(1)]
        class_ids = rows[:, 5].long()
        if len(class_ids) and bool(((class_ids < 0) | (class_ids >= params.num_classes)).any()):
            raise LeanEyeError(
                f"decoder 'end2end': model output class {int(class_ids.max())} is outside the engine's "
                f"{params.num_classes} class names"
            )
        return rows[:, :4], rows[:, 4], class_ids

    return decode_end2end


# The layouts of leaneye.vision.decoders.DECODERS (documented there), as torch ops on the batch's
# only item: (boxes in network pixels, scores, class ids) of the candidates passing the threshold.
_DECODERS = {"builtin": _builtin, "yolox": _yolox, "ultralytics": _ultralytics, "end2end": _end2end}
