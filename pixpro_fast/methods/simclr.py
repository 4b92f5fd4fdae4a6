"""SimCLR (Chen et al. 2020): two views, a projector, and a loss over the pairs of the batch,
negatives gathered from every rank: NT-Xent by default, or another pair loss
(``pair_loss``: contrastive, triplet_hard, triplet_all, npair; see :mod:`..pair_losses`)."""
from __future__ import annotations

from ..heads import MLP1d
from ..pair_losses import PAIR_LOSSES, nt_xent_loss, pair_loss
from .base import InstanceMethod, mean_cosine, pooled
from .registry import register_method

__all__ = ["SimCLR", "nt_xent_loss"]


@register_method(
    "simclr", "instance-level: NT-Xent (or another pair loss, --pair-loss) with negatives from every rank",
    defaults=dict(arch='resnet50', recipe='simclr', optimizer='lars', base_lr=0.3,
                  weight_decay=1e-06, warmup_epochs=10, epochs=100, temperature=0.1,
                  proj_hidden_dim=2048, proj_dim=128),
    settings=('temperature', 'pair_loss', 'pair_margin'),
    sync_bn=True)
class SimCLR(InstanceMethod):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.online["projector"] = MLP1d(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        if cfg.pair_loss not in PAIR_LOSSES:
            raise ValueError(f"unknown pair loss {cfg.pair_loss!r}; choose one of {', '.join(PAIR_LOSSES)}")
        self.pair_loss = cfg.pair_loss

    def loss_and_stats(self, view1, view2):
        on = self.online
        z1 = on["projector"](pooled(on["encoder"], view1))
        z2 = on["projector"](pooled(on["encoder"], view2))
        loss = pair_loss(self.pair_loss, z1, z2, self.cfg.temperature, self.cfg.pair_margin)
        return loss, mean_cosine(z1, z2)
