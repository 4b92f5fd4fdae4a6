"""What the instance-level objectives share: an encoder whose feature map is average-pooled,
an optional momentum target, and two views whose crop boxes they do not need."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoder import build_encoder
from .contract import Method, MethodOutput


def pooled(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled feature map: (B, C)."""
    return F.adaptive_avg_pool2d(encoder(x), 1).flatten(1)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.detach().float(), b.detach().float(), dim=1).mean()


class InstanceMethod(Method):
    """Base of BYOL, SimSiam, SimCLR, MoCo v2 and SwAV.

    Subclasses fill ``self.online`` (trained) and ``self.target`` (momentum copies of some
    online modules, possibly none) and implement ``loss_and_stats``. The crop boxes are
    accepted, as every method takes the same batch, and ignored.
    """

    num_views = 2

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.online["encoder"] = build_encoder(cfg.arch, cfg.encoder_weights)
        self.feat_dim = self.online["encoder"].out_channels

    def loss_and_stats(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, mean cosine between the two views' paired outputs)."""
        raise NotImplementedError

    def forward(self, views, coords=None) -> MethodOutput:
        loss, cos = self.loss_and_stats(*views)
        return MethodOutput(loss, {"positive_cosine": cos})
