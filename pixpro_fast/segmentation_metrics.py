"""Per-pixel classification scores from a confusion matrix: IoU per class, mean IoU over
the classes present in the ground truth, pixel accuracy; label :data:`IGNORE_INDEX` is
never counted."""
from __future__ import annotations

import torch

from .probe_data import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; IGNORE_INDEX pixels skipped."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != IGNORE_INDEX
    pred, target = pred[keep], target[keep]
    if len(target) and (target.min() < 0 or target.max() >= num_classes or pred.min() < 0
                        or pred.max() >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor) -> list[float | None]:
    """IoU = TP / (TP + FP + FN) per class; None for a class with no ground-truth pixels."""
    conf = conf.double()
    tp = conf.diag()
    gt, predicted = conf.sum(1), conf.sum(0)
    return [None if gt[c] == 0 else float(tp[c] / (gt[c] + predicted[c] - tp[c])) for c in range(len(conf))]


def mean_iou(conf: torch.Tensor) -> float:
    present = [v for v in iou_per_class(conf) if v is not None]
    if not present:
        raise ValueError("the confusion matrix holds no ground-truth pixels")
    return sum(present) / len(present)


def pixel_accuracy(conf: torch.Tensor) -> float:
    total = int(conf.sum())
    if total == 0:
        raise ValueError("the confusion matrix holds no ground-truth pixels")
    return float(conf.diag().sum()) / total
