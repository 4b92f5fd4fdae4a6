"""SimSiam (Chen & He 2021): a predictor and a stop-gradient, no target network."""
from __future__ import annotations

import torch.nn.functional as F

from ..heads import MLP1d
from .base import InstanceMethod, mean_cosine, pooled
from .registry import register_method

PREDICTOR_HIDDEN = 512  # the paper's bottleneck


def simsiam_loss(p1, p2, z1, z2):
    """``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2`` averaged over the batch."""
    d = lambda p, z: F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()
    return -0.5 * (d(p1, z2) + d(p2, z1))


@register_method(
    "simsiam", "instance-level: predictor + stop-gradient, no target",
    defaults=dict(arch='resnet50', recipe='mocov2', optimizer='sgd', base_lr=0.05,
                  weight_decay=0.0001, sgd_momentum=0.9, warmup_epochs=0, epochs=100,
                  proj_hidden_dim=2048, proj_dim=2048),
    sync_bn=True)
class SimSiam(InstanceMethod):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.online["projector"] = MLP1d(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=3, last_bn=True)
        self.online["predictor"] = MLP1d(cfg.proj_dim, PREDICTOR_HIDDEN, cfg.proj_dim)

    def loss_and_stats(self, view1, view2):
        on = self.online
        z1 = on["projector"](pooled(on["encoder"], view1))
        z2 = on["projector"](pooled(on["encoder"], view2))
        p1, p2 = on["predictor"](z1), on["predictor"](z2)
        return simsiam_loss(p1, p2, z1, z2), mean_cosine(p1, z2)
