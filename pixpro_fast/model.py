"""The PixPro model: online branch (encoder, projector, PPM), momentum target branch,
optional instance branch, and the loss, in one module whose forward returns the loss."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoder import build_encoder
from .heads import MLP2d, PixelPropagation
from .loss import instance_loss, pixcontrast_loss, pixpro_loss_with_stats
from .momentum import paired_parameters, update_target


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    encoder_weights: str | None = None
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    ppm_layers: int = 1
    ppm_gamma: float = 2.0
    ppm_clamp: float = 0.0
    pos_ratio: float = 0.7
    ins_loss_weight: float = 0.0
    pixpro_weight: float = 1.0        # weight of the pixel propagation (PixPro) loss
    pixcontrast_weight: float = 0.0   # weight of the PixContrast loss (pixel-level InfoNCE)
    neg_ratio: float = 0.7            # PixContrast: cells at or beyond this distance ratio are negatives
    temperature: float = 0.3          # PixContrast temperature
    concat_views: bool = False  # one encoder call for both views: faster, but BN statistics span both views


@dataclass
class StepOutput:
    loss: torch.Tensor
    pixel_loss: torch.Tensor         # the weighted pixel-level part (PixPro and/or PixContrast)
    instance_loss: torch.Tensor | None
    positive_pairs: torch.Tensor     # mean positive cell pairs per sample (detached)
    positive_cosine: torch.Tensor    # mean cosine of positive pairs (detached)


class PixPro(nn.Module):
    """``forward(view1, view2, coords1, coords2)`` returns the loss (or a StepOutput with stats).

    ``online`` holds what the optimiser trains; ``target`` is its momentum copy, initialised
    equal and updated only by :meth:`update_target`. The target runs in training mode like
    the online side (its BatchNorm normalises with batch statistics, as in the reference) and
    under ``torch.no_grad``: no graph is kept for it.

    By default each view passes through each encoder in its own call, so BatchNorm
    statistics are per view (the method as published). ``concat_views=True`` runs both views
    as one batch instead: fewer, larger kernels, but BN statistics then span both views.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        encoder = build_encoder(cfg.arch, cfg.encoder_weights)
        feat_dim = encoder.out_channels
        if cfg.pixpro_weight <= 0 and cfg.pixcontrast_weight <= 0:
            raise ValueError("at least one of pixpro_weight and pixcontrast_weight must be positive")
        online = {"encoder": encoder, "projector": MLP2d(feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)}
        if cfg.pixpro_weight > 0:
            online["ppm"] = PixelPropagation(cfg.proj_dim, cfg.ppm_layers, cfg.ppm_gamma, cfg.ppm_clamp)
        if cfg.ins_loss_weight > 0:
            online["projector_instance"] = MLP2d(feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)
            online["predictor"] = MLP2d(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.online = nn.ModuleDict(online)
        target = {k: copy.deepcopy(self.online[k]) for k in ("encoder", "projector", "projector_instance")
                  if k in self.online}
        self.target = nn.ModuleDict(target)
        for p in self.target.parameters():
            p.requires_grad_(False)

    # -- the momentum target ------------------------------------------------------------
    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        update_target(*paired_parameters(self.online, self.target), momentum)

    # -- forward --------------------------------------------------------------------------
    def _encode(self, encoder: nn.Module, view1: torch.Tensor, view2: torch.Tensor):
        if self.cfg.concat_views:
            return encoder(torch.cat([view1, view2])).chunk(2)
        return encoder(view1), encoder(view2)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, coords1: torch.Tensor, coords2: torch.Tensor,
                return_stats: bool = False):
        cfg, on = self.cfg, self.online
        feat1, feat2 = self._encode(on["encoder"], view1, view2)
        proj1, proj2 = self._encode(on["projector"], feat1, feat2)
        with torch.no_grad():
            tfeat1, tfeat2 = self._encode(self.target["encoder"], view1, view2)
            tproj1, tproj2 = self._encode(self.target["projector"], tfeat1, tfeat2)
        if cfg.pixpro_weight > 0:
            pred1, pred2 = on["ppm"](proj1), on["ppm"](proj2)
            pixel, npos, cos = pixpro_loss_with_stats(pred1, pred2, tproj1, tproj2, coords1, coords2, cfg.pos_ratio)
            if cfg.pixpro_weight != 1.0:
                pixel = cfg.pixpro_weight * pixel
        else:   # PixContrast alone: report the positive pairs of the raw projections
            with torch.no_grad():
                _, npos, cos = pixpro_loss_with_stats(proj1, proj2, tproj1, tproj2, coords1, coords2, cfg.pos_ratio)
            pixel = proj1.new_zeros((), dtype=torch.float32)
        if cfg.pixcontrast_weight > 0:
            pixel = pixel + cfg.pixcontrast_weight * pixcontrast_loss(
                proj1, proj2, tproj1, tproj2, coords1, coords2, cfg.pos_ratio, cfg.neg_ratio, cfg.temperature)
        ins = None
        total = pixel
        if cfg.ins_loss_weight > 0:
            p1, p2 = self._encode(on["projector_instance"], feat1, feat2)
            p1, p2 = self._encode(on["predictor"], p1, p2)
            with torch.no_grad():
                z1, z2 = self._encode(self.target["projector_instance"], tfeat1, tfeat2)
            pool = lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1)
            ins = instance_loss(pool(p1), pool(p2), pool(z1), pool(z2))
            total = pixel + cfg.ins_loss_weight * ins
        if not return_stats:
            return total
        return StepOutput(total, pixel.detach(), None if ins is None else ins.detach(), npos, cos)
