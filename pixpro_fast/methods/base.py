"""What the instance-level objectives share: an encoder whose feature map is average-pooled,
an optional momentum target, and the StepOutput they report."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoder import build_encoder
from ..model import StepOutput
from ..momentum import paired_parameters, update_target


def pooled(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled feature map: (B, C)."""
    return F.adaptive_avg_pool2d(encoder(x), 1).flatten(1)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.detach().float(), b.detach().float(), dim=1).mean()


class InstanceMethod(nn.Module):
    """Base of BYOL, SimSiam, SimCLR, MoCo v2 and SwAV.

    Subclasses fill ``self.online`` (trained) and ``self.target`` (momentum copies of some
    online modules, possibly none) and implement ``loss_and_stats``. The crop boxes are
    accepted, as every method takes the same batch, and ignored.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.online = nn.ModuleDict({"encoder": build_encoder(cfg.arch, cfg.encoder_weights)})
        self.target = nn.ModuleDict()
        self.feat_dim = self.online["encoder"].out_channels

    def make_target(self, *names: str) -> None:
        for name in names:
            self.target[name] = copy.deepcopy(self.online[name])
        for p in self.target.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        if len(self.target):
            update_target(*paired_parameters(self.online, self.target), momentum)

    def loss_and_stats(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, mean cosine between the two views' paired outputs)."""
        raise NotImplementedError

    def forward(self, view1, view2, coords1=None, coords2=None, return_stats: bool = False):
        loss, cos = self.loss_and_stats(view1, view2)
        if not return_stats:
            return loss
        one = torch.ones((), device=loss.device)
        return StepOutput(loss, loss.detach(), loss.detach(), one, cos)
