"""Mean IoU, IoU per class and pixel accuracy against a hand-computed confusion matrix."""

import pytest
import torch

from pixpro_fast import segmentation_metrics


def test_miou_and_accuracy_against_a_hand_computed_confusion_matrix():
    #            pred: 0  1  2
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 255, 255])
    pred = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2, 0])
    conf = segmentation_metrics.confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[5, 1, 0], [2, 3, 0], [0, 0, 0]]          # ignored pixels left out
    # IoU0 = 5 / (6 + 7 - 5) = 0.625, IoU1 = 3 / (5 + 4 - 3) = 0.5, class 2 absent
    assert segmentation_metrics.iou_per_class(conf) == [0.625, 0.5, None]
    assert segmentation_metrics.mean_iou(conf) == pytest.approx(0.5625)
    assert segmentation_metrics.pixel_accuracy(conf) == pytest.approx(8 / 11)
    # a class absent from the ground truth stays out of the mean, but its false
    # positives still lower the IoU of the class they were taken from
    conf2 = torch.tensor([[5, 1, 1], [2, 3, 0], [0, 0, 0]])
    assert segmentation_metrics.iou_per_class(conf2) == [pytest.approx(5 / 9), 0.5, None]
    assert segmentation_metrics.mean_iou(conf2) == pytest.approx((5 / 9 + 0.5) / 2)
    with pytest.raises(ValueError, match="class ids"):
        segmentation_metrics.confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
