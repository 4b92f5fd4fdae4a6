"""BYOL (Grill et al. 2020): online projector + predictor regress the momentum target's projection."""
from __future__ import annotations

import torch

from ..heads import MLP1d
from ..loss import instance_loss
from .base import InstanceMethod, mean_cosine, pooled
from .registry import register_method


@register_method(
    "byol", "instance-level: predictor regresses a momentum target",
    defaults=dict(arch='resnet50', recipe='byol', optimizer='lars', base_lr=0.2,
                  weight_decay=1.5e-06, warmup_epochs=10, epochs=300, ema_momentum=0.996,
                  proj_hidden_dim=4096, proj_dim=256),
    sync_bn=True)
class BYOL(InstanceMethod):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.online["projector"] = MLP1d(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.online["predictor"] = MLP1d(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.make_target("encoder", "projector")

    def loss_and_stats(self, view1, view2):
        on, tg = self.online, self.target
        p1 = on["predictor"](on["projector"](pooled(on["encoder"], view1)))
        p2 = on["predictor"](on["projector"](pooled(on["encoder"], view2)))
        with torch.no_grad():
            z1 = tg["projector"](pooled(tg["encoder"], view1))
            z2 = tg["projector"](pooled(tg["encoder"], view2))
        # -2 cos(p1, z2) - 2 cos(p2, z1): BYOL's 2 - 2 cos per direction, less its constant
        return instance_loss(p1, p2, z1, z2), mean_cosine(p1, z2)
