"""LOCA (Caron et al. 2022): location-aware self-supervised ViTs.

Each patch of a query view predicts which patch of a reference view lies under its centre
(a ``reference_grid**2``-way classification through one cross-attention block whose keys
and values are a masked set of reference tokens), and predicts the momentum teacher's
Sinkhorn-balanced cluster assignment of that reference patch. Views (the ``loca`` plan):
``views[0]`` the reference (224 px), ``views[1]`` query 0 (224 px), ``views[2:]`` the focal
queries (96 px).

Read from the reference implementation (its config, model, trainer and utils); where it
differs from a plain reading of the paper's recipe:

- The momentum TEACHER encodes the reference view, with all its tokens; the cluster
  targets come from all ``reference_grid**2`` teacher tokens, and only afterwards ("late"
  dropping) a CONTIGUOUS run of ``int(0.2 * 196) = 39`` teacher tokens starting at a random
  offset is kept as keys/values of the student's cross-attention block. No gradient
  reaches the reference. The teacher runs in training mode (stochastic depth on).
- Query 0 keeps a random SUBSET (a permutation's first 70) of its 196 tokens, dropped
  right after the position embedding; focal queries keep all 36 tokens. The reference code
  draws one subset per device batch; here each sample draws its own.
- The cluster predictions come from the student's encoder output (not the cross-attention
  output), projected by the MLP head; both losses ignore query patches outside the
  reference. The me-max term ``sum(p_mean * log p_mean)`` averages the student's softmax
  over ALL query patches, valid or not, across ranks; its weight is 1.
- Sinkhorn: 3 rounds of (divide by global per-prototype sums, then per-row sums) on
  softmax(teacher logits / 0.05) over every rank's ``B * reference_grid**2`` rows; rows end
  summing to 1 (no extra K / B scaling). The rounds are SwAV's (:mod:`pixpro_fast.sinkhorn`
  serves both); only the start differs.
- Learning rate: scenic's ``constant * cosine_decay * linear_warmup``: a linear warm-up
  from 0 over 15 epochs, then a cosine over the remaining 85 epochs down to 1% of the peak
  (scenic's ``cosine_decay`` starts after ``warmup_steps`` and its cycle is shortened by
  them): ``--lr-schedule warmup_cosine_relative --final-lr-fraction 0.01``.
  Momentum ``1 - (1 - 0.996) * cos_factor``: 0.996 rising to 1 on a cosine.
- The reference's per-device losses are normalised by the local valid count; here the
  position and cluster cross-entropies are normalised by the GLOBAL count, so that the
  DistributedDataParallel average of the rank losses (and gradients) equals the
  single-process loss on the concatenated batch.
- Views (data side): colour jitter (p 0.8; 0.4, 0.4, 0.2, 0.1) and grayscale (p 0.2) on
  EVERY view, the reference included; solarize (p 0.2) on query 0 only. Blur is effectively
  off: its calls pass the probability into the ``height`` argument, so the kernel has size 1.
  Reference: area 32-100%, no flip; query 0: 32-100%; focal: 5-32%; queries flip at random.
  Labels there come from a chain of nearest-neighbour resizes of a 14 x 14 index map; here
  they are read at each query patch centre (the same within a pixel).
- Initialisation of the backbone follows timm; the heads use the reference's (xavier
  uniform in the cross-attention block, lecun normal in the MLP head, unit-norm
  prototypes). GELU is exact here (the reference's flax GELU is the tanh approximation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_reduce_sum, gather_with_grad, world
from ..sinkhorn import sinkhorn
from ..vit import PATCH, VIT_ARCHS, ViTEncoder
from .contract import Method, MethodOutput
from .registry import register_method

# The shipped 100-epoch ImageNet-1k recipe, for wiring into a config.
TRAINING_DEFAULTS: dict = {
    "optimizer": "adamw",
    "base_lr": 1e-3,                 # peak lr = base_lr * batch_size / 1024
    "lr_reference_batch": 1024,
    "weight_decay": 0.1,             # not on 1-D parameters (biases, norms, ...)
    "betas": (0.9, 0.999),           # optax.adamw defaults
    "warmup_epochs": 15,             # linear warm-up from 0 ...
    "lr_schedule": "warmup_cosine_relative",   # ... then a cosine over the remaining steps ...
    "final_lr_fraction": 0.01,       # ... down to 1% of the peak
    "clip_grad_norm": 1.0,
    "momentum": 0.996,               # EMA teacher, rising to 1 on a cosine
    "final_momentum": 1.0,
    "epochs": 100,
    "batch_size": 1024,
    "stochastic_depth": 0.1,
}


def patch_position_labels(query_coords: torch.Tensor, reference_coords: torch.Tensor,
                          query_grid: int, reference_grid: int) -> torch.Tensor:
    """Index of the reference patch under each query patch centre, -1 outside the reference.

    Coordinates follow the box contract ((B, 4) ``(x_a, y_a, x_b, y_b)``, flips swap x),
    with a view spanning ``[x_a, x_b]`` (as ``geometry.cell_centers``). Returns (B,
    query_grid**2) int64 in row-major query-patch order, values row-major reference indices.
    """
    from pipelines.geometry import cell_centers
    cx, cy, _ = cell_centers(query_coords, query_grid, query_grid)
    r = reference_coords.float()
    u = (cx - r[:, 0, None]) / (r[:, 2, None] - r[:, 0, None])       # 0..1 across the reference
    v = (cy - r[:, 1, None]) / (r[:, 3, None] - r[:, 1, None])
    col = torch.floor(u * reference_grid).long()
    row = torch.floor(v * reference_grid).long()
    inside = (col >= 0) & (col < reference_grid) & (row >= 0) & (row < reference_grid)
    return torch.where(inside, row * reference_grid + col, torch.full_like(col, -1))


def _lecun_normal_(w: torch.Tensor) -> None:
    """Truncated normal of variance 1 / fan_in (flax's lecun_normal)."""
    std = 1.0 / math.sqrt(w.shape[1]) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


class CrossAttentionBlock(nn.Module):
    """Pre-LN block: queries attend to (separately normalised) keys/values, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        nn.init.xavier_uniform_(self.attn.out_proj.weight)
        for lin in (self.mlp[0], self.mlp[2]):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-6)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        x = x + self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class PositionHead(nn.Module):
    """Cross-attention block, final LayerNorm, linear to the reference positions."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, positions: int):
        super().__init__()
        self.block = CrossAttentionBlock(dim, heads, mlp_dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.predictor = nn.Linear(dim, positions)
        _lecun_normal_(self.predictor.weight)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, queries: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.norm(self.block(queries, reference)))


class ClusterHead(nn.Module):
    """MLP (hidden, GELU, hidden, GELU, bottleneck), L2 normalisation, then unit-norm
    (weight-normalised, no bias) prototypes: cosine logits (..., num_prototypes)."""

    def __init__(self, dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, num_prototypes: int = 4096):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                _lecun_normal_(m.weight)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        _lecun_normal_(self.prototypes)
        with torch.no_grad():
            self.prototypes.copy_(F.normalize(self.prototypes, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        w = self.prototypes / (self.prototypes.norm(dim=1, keepdim=True) + 1e-10)
        return F.linear(z, w)


@dataclass
class LOCAMasks:
    """Which tokens one batch keeps: query 0's kept indices (B, k), sorted; the start (B,) of
    each reference's contiguous run of kept teacher tokens."""
    query_keep: torch.Tensor
    reference_start: torch.Tensor

    def __getitem__(self, rows) -> "LOCAMasks":
        return LOCAMasks(self.query_keep[rows], self.reference_start[rows])


@register_method(
    "loca", "ViT: patch positions of query views inside a masked reference, plus cluster targets (LOCA)",
    defaults=dict(arch='vit_base_patch16', recipe='loca', image_size=224, optimizer='adamw',
                  base_lr=0.00025, final_lr_fraction=0.01, weight_decay=0.1, clip_grad_norm=1.0,
                  warmup_epochs=15, epochs=100, ema_momentum=0.996, ema_schedule='cosine',
                  temperature=0.1, teacher_temperature=0.05, num_prototypes=4096, sinkhorn_iters=3,
                  proj_hidden_dim=2048, proj_dim=256, query_keep=70, reference_keep=0.2,
                  stochastic_depth=0.1, lr_schedule='warmup_cosine_relative'),
    settings=('temperature', 'num_prototypes', 'sinkhorn_iters', 'teacher_temperature', 'query_keep',
              'reference_keep', 'stochastic_depth'),
    encoder="vit")
class LOCA(Method):
    num_views = 11

    def __init__(self, arch: str = "vit_base_patch16", reference_size: int = 224, num_focal: int = 9,
                 query_keep: int = 70, reference_keep_fraction: float = 0.2, stochastic_depth: float = 0.1,
                 head_hidden_dim: int = 2048, head_bottleneck_dim: int = 256, num_prototypes: int = 4096,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.05,
                 sinkhorn_iters: int = 3):
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f"LOCA needs a ViT encoder (arch one of {sorted(VIT_ARCHS)}): it predicts the "
                             f"positions of patch tokens; got arch {arch!r}")
        if reference_size % PATCH:
            raise ValueError(f"LOCA reference_size must be a multiple of {PATCH}, got {reference_size}")
        self.num_views = 2 + num_focal
        self.reference_grid = reference_size // PATCH
        positions = self.reference_grid ** 2
        self.query_keep = query_keep
        self.reference_keep = max(1, int(reference_keep_fraction * positions))
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.sinkhorn_iters = sinkhorn_iters
        dim, _, heads = VIT_ARCHS[arch]
        self.online["encoder"] = ViTEncoder(arch, reference_size, stochastic_depth)
        self.online["position"] = PositionHead(dim, heads, 4 * dim, positions)
        self.online["cluster"] = ClusterHead(dim, head_hidden_dim, head_bottleneck_dim, num_prototypes)
        self.make_target("encoder", "cluster")

    @classmethod
    def from_config(cls, cfg) -> "LOCA":
        """LOCA with the reference view at ``cfg.image_size`` (the 'loca' plan scales with it)."""
        return cls(arch=cfg.arch, reference_size=cfg.image_size, query_keep=cfg.query_keep,
                   reference_keep_fraction=cfg.reference_keep, stochastic_depth=cfg.stochastic_depth,
                   head_hidden_dim=cfg.proj_hidden_dim, head_bottleneck_dim=cfg.proj_dim,
                   num_prototypes=cfg.num_prototypes, student_temperature=cfg.temperature,
                   teacher_temperature=cfg.teacher_temperature, sinkhorn_iters=cfg.sinkhorn_iters)

    def check_views(self, count: int) -> None:
        if count != self.num_views:
            raise ValueError(f"LOCA needs a view plan of {self.num_views} views: a reference view, query 0 and "
                             f"{self.num_views - 2} focal queries (the 'loca' recipe); got {count} view(s)")

    def draw_masks(self, batch_size: int, query_tokens: int, generator: torch.Generator | None = None,
                   device=None) -> LOCAMasks:
        """Random kept tokens: a subset of query 0, a contiguous run of the reference."""
        k = min(self.query_keep, query_tokens)
        order = torch.rand(batch_size, query_tokens, generator=generator).argsort(dim=1)
        keep = order[:, :k].sort(dim=1).values
        positions = self.reference_grid ** 2
        start = torch.randint(0, positions - self.reference_keep + 1, (batch_size,), generator=generator)
        return LOCAMasks(keep.to(device), start.to(device))

    def forward(self, views: Sequence[torch.Tensor], coords: Sequence[torch.Tensor],
                masks: LOCAMasks | None = None) -> MethodOutput:
        self.check_views(len(views))
        ref = views[0]
        if ref.shape[-1] != self.reference_grid * PATCH or ref.shape[-2] != ref.shape[-1]:
            raise ValueError(f"LOCA needs a square {self.reference_grid * PATCH} px reference view (views[0]), "
                             f"got {tuple(ref.shape[-2:])}")
        b, rg, n_focal = ref.shape[0], self.reference_grid, len(views) - 2
        qg0, qgf = views[1].shape[-1] // PATCH, views[2].shape[-1] // PATCH
        if masks is None:
            masks = self.draw_masks(b, qg0 * qg0, device=ref.device)

        # Teacher: all reference tokens -> balanced cluster targets; a contiguous run -> keys/values.
        with torch.no_grad():
            t_tokens = self.target["encoder"](ref)                                   # (B, R, D)
            t_probs = F.softmax(self.target["cluster"](t_tokens).float() / self.teacher_temperature, dim=-1)
            targets = sinkhorn(t_probs.flatten(0, 1), iters=self.sinkhorn_iters).view(b, rg * rg, -1)
            run = masks.reference_start[:, None] + torch.arange(self.reference_keep, device=ref.device)
            kv = t_tokens.gather(1, run[..., None].expand(-1, -1, t_tokens.shape[-1]))

        enc, pos_head, clu_head = self.online["encoder"], self.online["position"], self.online["cluster"]
        # Query 0 on its kept tokens; focal queries, all tokens, batched view-major.
        q0 = enc(views[1], keep=masks.query_keep)                                    # (B, k, D)
        qf = enc(torch.cat(list(views[2:]), dim=0))                                  # (F*B, Nf, D)
        labels0 = patch_position_labels(coords[1], coords[0], qg0, rg).gather(1, masks.query_keep)
        labelsf = torch.cat([patch_position_labels(c, coords[0], qgf, rg) for c in coords[2:]], dim=0)

        logits = torch.cat([pos_head(q0, kv).flatten(0, 1),
                            pos_head(qf, kv.repeat(n_focal, 1, 1)).flatten(0, 1)]).float()
        preds = torch.cat([clu_head(q0).flatten(0, 1), clu_head(qf).flatten(0, 1)]).float() / self.student_temperature
        labels = torch.cat([labels0.flatten(), labelsf.flatten()])
        sample = torch.cat([torch.arange(b, device=ref.device).repeat_interleave(labels0.shape[1]),
                            torch.arange(b, device=ref.device).repeat(n_focal).repeat_interleave(labelsf.shape[1])])
        valid = labels >= 0
        safe = labels.clamp(min=0)

        _, world_size = world()
        count = all_reduce_sum(valid.sum().float()).clamp(min=1.0)
        scale = world_size / count          # so that the mean over ranks is the global-batch loss
        pos_ce = F.cross_entropy(logits, safe, reduction="none")
        position_loss = (pos_ce * valid).sum() * scale
        log_p = F.log_softmax(preds, dim=-1)
        clu_ce = -(targets[sample, safe] * log_p).sum(dim=-1)
        cluster_ce = (clu_ce * valid).sum() * scale
        mean_p = gather_with_grad(log_p.exp().mean(dim=0, keepdim=True)).mean(dim=0)
        me_max = (mean_p * torch.log(mean_p)).sum()
        loss = position_loss + cluster_ce + me_max

        with torch.no_grad():
            n_valid = valid.sum().clamp(min=1)
            stats = {
                "position_loss": position_loss.detach() / world_size,
                "cluster_loss": cluster_ce.detach() / world_size,
                "me_max": me_max.detach(),
                "position_accuracy": ((logits.argmax(-1) == labels) & valid).sum().float() / n_valid,
                "valid_fraction": valid.float().mean(),
                "prediction_entropy": -me_max.detach(),
                "target_entropy": -(targets * torch.log(targets.clamp(min=1e-12))).sum(-1).mean(),
                "query_tokens_kept": torch.tensor(float(q0.shape[1]), device=ref.device),
                "reference_tokens_kept": torch.tensor(float(kv.shape[1]), device=ref.device),
            }
        return MethodOutput(loss, stats)
