"""MoCo v2 (Chen et al. 2020): a momentum key encoder, a queue of keys, InfoNCE; batch
shuffling across ranks ("shuffle BN") keeps BatchNorm from leaking the positive."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import broadcast, gather_no_grad, world
from ..heads import MLP1d
from .base import InstanceMethod, mean_cosine, pooled
from .registry import register_method


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the key of the same sample as positive and the queue (d, K) as negatives;
    q and k normalised (B, d)."""
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = (q @ queue).float()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@register_method(
    "mocov2", "instance-level: momentum keys and a queue of negatives",
    defaults=dict(arch='resnet50', recipe='mocov2', optimizer='sgd', base_lr=0.03,
                  weight_decay=0.0001, sgd_momentum=0.9, warmup_epochs=0, epochs=200,
                  ema_momentum=0.999, ema_schedule='constant', temperature=0.2, queue_size=65536,
                  proj_hidden_dim=2048, proj_dim=128),
    settings=('temperature', 'queue_size', 'moco_symmetric'))
class MoCoV2(InstanceMethod):
    def __init__(self, cfg):
        super().__init__(cfg)
        # MoCo v2's head: fc -> ReLU -> fc, no BatchNorm
        self.online["projector"] = MLP1d(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_dim, hidden_bn=False)
        self.make_target("encoder", "projector")
        if cfg.queue_size < 1:
            raise ValueError(f"MoCo needs a positive queue_size, got {cfg.queue_size}")
        self.register_buffer("queue", F.normalize(torch.randn(cfg.proj_dim, cfg.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of every rank into the queue, oldest first out."""
        keys = gather_no_grad(keys)
        n, size = keys.shape[0], self.queue.shape[1]
        if size % n:
            raise ValueError(f"queue_size {size} must be a multiple of the global batch {n}")
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + n] = keys.t().to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)

    @torch.no_grad()
    def keys(self, view: torch.Tensor) -> torch.Tensor:
        """Target embeddings; across ranks the batch is shuffled first and unshuffled after,
        so each rank's BatchNorm sees a random mix of samples."""
        tg = self.target
        rank, size = world()
        if size == 1:
            return F.normalize(tg["projector"](pooled(tg["encoder"], view)).float(), dim=1)
        everything = gather_no_grad(view)
        perm = broadcast(torch.randperm(everything.shape[0], device=view.device))
        n = view.shape[0]
        mine = perm[rank * n:(rank + 1) * n]
        k = F.normalize(tg["projector"](pooled(tg["encoder"], everything[mine])).float(), dim=1)
        all_k = gather_no_grad(k)
        return all_k[torch.argsort(perm)][rank * n:(rank + 1) * n]

    def loss_and_stats(self, view1, view2):
        on = self.online
        queue = self.queue.clone()
        pairs = [(view1, view2), (view2, view1)] if self.cfg.moco_symmetric else [(view1, view2)]
        loss, keys = 0.0, []
        for vq, vk in pairs:
            q = F.normalize(on["projector"](pooled(on["encoder"], vq)).float(), dim=1)
            k = self.keys(vk)
            loss = loss + moco_loss(q, k, queue, self.cfg.temperature) / len(pairs)
            keys.append(k)
        for k in keys:
            self.enqueue(k)
        return loss, mean_cosine(q, k)
