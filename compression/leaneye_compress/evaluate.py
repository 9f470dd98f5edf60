"""Score a PyTorch LeanDet on generated scenes by the protocol of `shared/EVAL.md`.

Post-processing is the runtime's own (`leaneye.vision.postprocess.Postprocessor` with the model's
manifest), so what is measured here is what an exported engine will do on the vehicle.
"""

from __future__ import annotations

import torch

from leaneye.eval import EVAL_PROTOCOL, EvalResult, ImageDetections, evaluate
from leaneye.scenes.dataset import scene_ground_truth
from leaneye.vision.postprocess import DetectionSettings, Postprocessor

from .data import SceneSet
from .models.contract import network_input
from .models.detector import DecodedOutputs, LeanDet
from .stages.export import builtin_manifest


@torch.no_grad()
def predict(model: LeanDet, scene_set: SceneSet, class_names, batch_size: int = 16) -> dict[int, ImageDetections]:
    postprocessor = Postprocessor(
        builtin_manifest(model, class_names), DetectionSettings(**EVAL_PROTOCOL.detector_settings())
    )
    transform = scene_set.transform
    was_training = model.training
    decoded = DecodedOutputs(model).eval()
    detections = {}
    try:
        for start in range(0, len(scene_set.images), batch_size):
            batch = torch.from_numpy(network_input(scene_set.images[start : start + batch_size]))
            outputs = decoded(batch).numpy()
            for k, out in enumerate(outputs):
                frame = scene_set.frames[start + k]
                boxes, scores, class_ids = postprocessor.run([out[None]], transform, frame.image.shape[:2])
                detections[start + k] = ImageDetections.from_class_ids(boxes, scores, class_ids, class_names)
    finally:
        model.train(was_training)
    return detections


def evaluate_model(
    model: LeanDet, scene_set: SceneSet, class_names, bootstrap: int = EVAL_PROTOCOL.bootstrap
) -> EvalResult:
    return evaluate(scene_ground_truth(scene_set.frames), predict(model, scene_set, class_names), bootstrap=bootstrap)
