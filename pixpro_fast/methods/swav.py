"""SwAV (Caron et al. 2020): online clustering onto prototypes with Sinkhorn-Knopp codes,
and the swapped prediction of a view's code from every other view. With the
``swav_multicrop`` view plan (2 x 224 + 6 x 96) the codes come from the two large views and
all eight views predict them; with two views it is the plain swapped prediction. A queue of
past embeddings is optional: as the reference's (``epoch_queue_starts``), it is neither
filled nor used before epoch ``swav_queue_start_epoch``; from then on each step pushes the
batch's embeddings in, and once it is full the codes are computed over the queue and the
batch together."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..heads import MLP1d
from ..sinkhorn import sinkhorn
from .base import InstanceMethod, mean_cosine, pooled
from .contract import MethodOutput
from .registry import register_method


def swapped_prediction_loss(scores1, scores2, codes1, codes2, temperature: float) -> torch.Tensor:
    """``-(sum q1 log softmax(s2 / t) + sum q2 log softmax(s1 / t)) / 2`` averaged over the batch."""
    l12 = (codes1 * F.log_softmax(scores2.float() / temperature, dim=1)).sum(1).mean()
    l21 = (codes2 * F.log_softmax(scores1.float() / temperature, dim=1)).sum(1).mean()
    return -0.5 * (l12 + l21)


def multicrop_swapped_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss over views: for each view ``a`` with codes ``codes[a]`` (the first
    ``len(codes)`` views), ``-mean_b sum q_a log softmax(s_v / t)`` averaged over every other
    view ``v``, then averaged over the coded views. Two views give :func:`swapped_prediction_loss`."""
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    total = 0.0
    for a, q in enumerate(codes):
        terms = [(q * log_p[v]).sum(1).mean() for v in range(len(scores)) if v != a]
        total = total - sum(terms) / len(terms)
    return total / len(codes)


@register_method(
    "swav", "instance-level: swapped prediction of Sinkhorn cluster codes",
    defaults=dict(arch='resnet50', recipe='simclr', optimizer='lars', base_lr=0.3, final_lr=0.0006,
                  weight_decay=1e-06, warmup_epochs=10, epochs=200, temperature=0.1,
                  num_prototypes=3000, sinkhorn_eps=0.05, sinkhorn_iters=3, swav_queue=0,
                  swav_queue_start_epoch=15, freeze_prototypes_steps=313, proj_hidden_dim=2048, proj_dim=128),
    settings=('temperature', 'num_prototypes', 'sinkhorn_eps', 'sinkhorn_iters', 'swav_queue', 'swav_queue_start_epoch',
              'freeze_prototypes_steps'),
    sync_bn=True)
class SwAV(InstanceMethod):
    num_views = None       # two views, or the multi-crop plan: codes from the first two
    min_views = 2
    coded_views = 2

    def __init__(self, cfg):
        super().__init__(cfg)
        self.online["projector"] = MLP1d(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.online["prototypes"] = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(2, cfg.swav_queue, cfg.proj_dim))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.long))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """The queue (if any) is filled and used from epoch ``swav_queue_start_epoch`` on."""
        self.queue_on = self.cfg.swav_queue > 0 and epoch >= self.cfg.swav_queue_start_epoch

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.online["prototypes"].weight
        w.copy_(F.normalize(w, dim=1))

    def before_optimizer_step(self, step: int) -> None:
        """The prototypes stay fixed for the first ``freeze_prototypes_steps`` steps."""
        if step < self.cfg.freeze_prototypes_steps:
            self.online["prototypes"].weight.grad = None

    def after_optimizer_step(self) -> None:
        self.normalize_prototypes()

    @torch.no_grad()
    def _codes(self, view_index: int, scores: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = scores.shape[0]
        if self.queue_on:
            if int(self.queue_fill) >= cfg.swav_queue:    # the queue is full: use it for the codes
                queued = self.queue[view_index].to(scores.dtype) @ self.online["prototypes"].weight.t().to(scores.dtype)
                codes = sinkhorn(torch.cat([queued, scores.detach()]), iters=cfg.sinkhorn_iters,
                                 eps=cfg.sinkhorn_eps)[-n:]
            else:
                codes = sinkhorn(scores.detach(), iters=cfg.sinkhorn_iters, eps=cfg.sinkhorn_eps)
            self.queue[view_index] = torch.cat([z.detach().to(self.queue.dtype), self.queue[view_index, :-n]])
            return codes
        return sinkhorn(scores.detach(), iters=cfg.sinkhorn_iters, eps=cfg.sinkhorn_eps)

    def _embed(self, views) -> list[torch.Tensor]:
        """L2-normalised projections of every view; views of one size pass the encoder together
        (as the reference does for its multi-crop batches)."""
        on, out, k = self.online, [], 0
        while k < len(views):
            j = k
            while j < len(views) and views[j].shape[-2:] == views[k].shape[-2:]:
                j += 1
            group = views[k] if j == k + 1 else torch.cat(list(views[k:j]))
            z = F.normalize(on["projector"](pooled(on["encoder"], group)).float(), dim=1)
            out += list(z.chunk(j - k)) if j > k + 1 else [z]
            k = j
        return out

    def forward(self, views, coords=None) -> MethodOutput:
        self.check_views(len(views))
        z = self._embed(views)
        scores = [self.online["prototypes"](zi) for zi in z]
        codes = [self._codes(a, scores[a], z[a]) for a in range(self.coded_views)]
        if self.queue_on:
            self.queue_fill.add_(z[0].shape[0])
        loss = multicrop_swapped_loss(scores, codes, self.cfg.temperature)
        return MethodOutput(loss, {"positive_cosine": mean_cosine(z[0], z[1])})
