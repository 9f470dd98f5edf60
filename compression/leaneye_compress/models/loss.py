"""Training loss of LeanDet: task-aligned assignment, IoU-aware classification, GIoU box regression.

For every ground-truth box, the candidate cells are those whose centre lies inside it (or, for boxes
too small to contain one, the nearest stride-8 cell). Among the candidates, the `top_k` cells with
the highest alignment score^alpha · IoU^beta become positives (a cell claimed by two boxes goes to
the one it overlaps most). Positives learn the class with a soft target equal to their normalised
alignment (so a score predicts localisation quality, which is what mAP50-95 rewards), and the box
with GIoU. Cells inside ignore regions that are not positives are neither pushed up nor down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..config import bounded, positive


@dataclass(frozen=True)
class LossConfig:
    top_k: int = positive(10)
    alpha: float = bounded(1.0, low=0)
    beta: float = bounded(6.0, low=0)
    box_weight: float = bounded(2.5, low=0)
    cls_weight: float = bounded(1.0, low=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (M, 4) and (N, 4) xyxy boxes → (M, N)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of matched (N, 4) boxes."""
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(-1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(-1)
    union = area_p + area_t - inter + 1e-9
    enclose = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0).prod(
        -1
    ) + 1e-9
    return 1.0 - (inter / union - (enclose - union) / enclose)


def _points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(M, N) mask: point n lies inside box m."""
    x, y = points[None, :, 0], points[None, :, 1]
    return (x > boxes[:, None, 0]) & (x < boxes[:, None, 2]) & (y > boxes[:, None, 1]) & (y < boxes[:, None, 3])


def detection_loss(
    cls_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    points: torch.Tensor,
    strides: torch.Tensor,
    targets: list[dict],
    config: LossConfig = LossConfig(),
) -> tuple[torch.Tensor, dict]:
    """`targets[i]`: {"boxes": (M, 4) xyxy input pixels, "labels": (M,) long, "ignore": (K, 4) boxes}."""
    batch, cells, num_classes = cls_logits.shape
    cls_target = torch.zeros_like(cls_logits)
    cls_weight = torch.ones_like(cls_logits[..., 0])
    box_losses, box_weights = [], []
    scores = cls_logits.detach().sigmoid()
    finest = strides == strides.min()
    for i, target in enumerate(targets):
        ignore = target["ignore"]
        if len(ignore):
            cls_weight[i] = (~_points_in_boxes(points, ignore).any(0)).float()
        gt, labels = target["boxes"], target["labels"]
        if len(gt) == 0:
            continue
        candidates = _points_in_boxes(points, gt)
        # boxes too small to hold a cell centre: take the nearest stride-8 cell
        empty = ~candidates.any(1)
        if empty.any():
            centres = (gt[empty, :2] + gt[empty, 2:]) / 2
            dist = torch.cdist(centres, points[finest])
            nearest = torch.nonzero(finest).squeeze(1)[dist.argmin(1)]
            candidates[torch.nonzero(empty).squeeze(1), nearest] = True
        iou = box_iou(gt, pred_boxes[i].detach())  # (M, N)
        align = scores[i][:, labels].T.pow(config.alpha) * iou.pow(config.beta) * candidates
        k = min(config.top_k, cells)
        top = align.topk(k, dim=1).indices
        positive = torch.zeros_like(candidates)
        positive.scatter_(1, top, True)
        positive &= candidates
        # a cell claimed by several boxes belongs to the one it overlaps most
        multi = positive.sum(0) > 1
        if multi.any():
            best = (iou * positive).argmax(0)
            positive[:, multi] = False
            positive[best[multi], torch.nonzero(multi).squeeze(1)] = True
        gt_index, cell_index = torch.nonzero(positive, as_tuple=True)
        if len(cell_index) == 0:
            continue
        # normalised alignment: the best cell of each box gets that box's best IoU
        pos_align = align * positive
        max_align = pos_align.amax(1, keepdim=True).clamp(min=1e-9)
        max_iou = (iou * positive).amax(1, keepdim=True)
        soft = (pos_align / max_align * max_iou)[gt_index, cell_index]
        cls_target[i, cell_index, labels[gt_index]] = soft
        cls_weight[i, cell_index] = 1.0
        box_losses.append(giou_loss(pred_boxes[i, cell_index], gt[gt_index]) * soft)
        box_weights.append(soft)
    norm = max(float(cls_target.sum()), 1.0)
    bce = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="none")
    loss_cls = (bce * cls_weight[..., None]).sum() / norm
    loss_box = torch.cat(box_losses).sum() / norm if box_losses else pred_boxes.sum() * 0.0
    total = config.cls_weight * loss_cls + config.box_weight * loss_box
    return total, {"cls": loss_cls.item(), "box": loss_box.item()}
