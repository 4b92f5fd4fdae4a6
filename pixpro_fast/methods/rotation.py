"""Rotation prediction (Gidaris et al. 2018): every view at 0, 90, 180 and 270 degrees, and a
4-way linear classifier on the pooled features names the rotation."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import pooled
from .contract import MethodOutput
from .pretext import PretextMethod, accuracy
from .registry import register_method

# ImageNet schedule of the reference setting: 128 images a step (512 rotated views).
TRAINING_DEFAULTS = {
    "optimizer": "sgd", "lr": 0.2, "batch_size": 128, "momentum": 0.9, "weight_decay": 1e-4,
    "epochs": 70, "warmup_epochs": 5, "warmup_start_factor": 0.1,
    "schedule": "step", "lr_milestones": (30, 50), "lr_gamma": 0.1,
}


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S, S) -> (4B, C, S, S) rotated copies (block k is rotated by k * 90 degrees
    counter-clockwise) and their (4B,) labels k. A non-square view is centre-cropped to its
    shorter side first, so all four rotations share one shape."""
    h, w = x.shape[-2:]
    s = min(h, w)
    if h != w:
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top:top + s, left:left + s]
    out = torch.cat([x, x.rot90(1, (2, 3)), x.rot90(2, (2, 3)), x.rot90(3, (2, 3))], 0)
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return out, labels


@register_method(
    "rotation", "pretext: which of four rotations a view shows",
    defaults=dict(arch='resnet50', recipe='single', optimizer='sgd', base_lr=0.4,
                  weight_decay=0.0001, epochs=70, warmup_epochs=5, sgd_momentum=0.9, final_lr=0.0))
class Rotation(PretextMethod):
    def __init__(self, arch: str = "resnet50", encoder_weights: str | None = None, **view_stats):
        super().__init__(arch, encoder_weights, **view_stats)
        self.online["head"] = nn.Linear(self.feat_dim, 4)

    def forward(self, views, coords=None) -> MethodOutput:
        x = self.single_view(views)
        rotated, labels = rotations(x)
        logits = self.online["head"](pooled(self.online["encoder"], rotated.contiguous(memory_format=torch.channels_last)))
        loss = F.cross_entropy(logits.float(), labels)
        return MethodOutput(loss, {"accuracy": accuracy(logits, labels)})
