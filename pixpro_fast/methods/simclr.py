"""SimCLR (Chen et al. 2020): NT-Xent over both views, negatives gathered from every rank."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad, world
from ..heads import MLP1d
from .base import InstanceMethod, mean_cosine, pooled
from .registry import register_method


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent for this rank's 2n anchors against all 2N embeddings of every rank.

    Each anchor's positive is the other view of its sample, its negatives every other
    embedding but itself. Gathering keeps gradients, so the mean over ranks of this loss
    equals the single-process loss on the concatenated batch, gradients included.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    rank, _ = world()
    n = z1.shape[0]
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    total = all1.shape[0]
    keys = torch.cat([all1, all2])                                   # (2N, d)
    anchors = torch.cat([z1, z2])                                    # (2n, d)
    logits = (anchors @ keys.t()).float() / temperature
    own = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([own, own + total])
    pos_idx = torch.cat([own + total, own])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.index_put((rows, self_idx), torch.tensor(float("-inf"), device=z1.device))
    return F.cross_entropy(logits, pos_idx)


@register_method(
    "simclr", "instance-level: NT-Xent with negatives from every rank",
    defaults=dict(arch='resnet50', recipe='simclr', optimizer='lars', base_lr=0.3,
                  weight_decay=1e-06, warmup_epochs=10, epochs=100, temperature=0.1,
                  proj_hidden_dim=2048, proj_dim=128),
    settings=('temperature',),
    sync_bn=True)
class SimCLR(InstanceMethod):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.online["projector"] = MLP1d(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)

    def loss_and_stats(self, view1, view2):
        on = self.online
        z1 = on["projector"](pooled(on["encoder"], view1))
        z2 = on["projector"](pooled(on["encoder"], view2))
        return nt_xent_loss(z1, z2, self.cfg.temperature), mean_cosine(z1, z2)
