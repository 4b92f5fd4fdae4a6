"""PixPro (Xie et al. 2020) and its pixel-level family: online branch (encoder, projector,
PPM), momentum target branch, optional BYOL-style instance branch (``pixpro_ins``), and the
pixel-level InfoNCE alternative (``pixcontrast``), selected by loss weights."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoder import build_encoder
from ..heads import MLP2d, PixelPropagation
from ..loss import instance_loss, pixcontrast_loss, pixpro_loss_with_stats
from .contract import Method, MethodOutput
from .registry import register_method

# what the pixel-level family reads beyond the shared settings; its members differ by loss weights
PIXEL_SETTINGS = ("concat_views", "temperature", "ppm_layers", "ppm_gamma", "ppm_clamp", "pos_ratio", "ins_loss_weight",
                  "pixpro_weight", "pixcontrast_weight", "neg_ratio")


# the paper's ResNet-50 setting (LARS, 100 epochs), shared by the family
PIXPRO_REFERENCE = dict(arch="resnet50", recipe="byol", optimizer="lars", base_lr=1.0, weight_decay=1e-5,
                        warmup_epochs=5, epochs=100, ema_momentum=0.99, pos_ratio=0.7, ppm_layers=1, ppm_gamma=2.0,
                        proj_hidden_dim=4096, proj_dim=256)


@register_method("pixcontrast", "pixel-level InfoNCE between views (PixContrast)", settings=PIXEL_SETTINGS, sync_bn=True,
                 positive=("pixcontrast_weight",),
                 defaults=dict(PIXPRO_REFERENCE, neg_ratio=0.7, temperature=0.3, pixpro_weight=0.0, pixcontrast_weight=1.0))
@register_method("pixpro_ins", "PixPro plus the BYOL-style instance branch", settings=PIXEL_SETTINGS, sync_bn=True,
                 positive=("ins_loss_weight",), defaults=dict(PIXPRO_REFERENCE, ins_loss_weight=1.0))
@register_method("pixpro", "pixel propagation consistency (PixPro)", settings=PIXEL_SETTINGS, sync_bn=True,
                 defaults=PIXPRO_REFERENCE)
class PixPro(Method):
    """``forward((view1, view2), (coords1, coords2))`` returns a :class:`MethodOutput`.

    ``online`` holds what the optimiser trains; ``target`` is its momentum copy, initialised
    equal and updated only by :meth:`update_target`. The target runs in training mode like
    the online side (its BatchNorm normalises with batch statistics, as in the reference) and
    under ``torch.no_grad``: no graph is kept for it.

    By default each view passes through each encoder in its own call, so BatchNorm
    statistics are per view (the method as published). ``concat_views=True`` runs both views
    as one batch instead: fewer, larger kernels, but BN statistics then span both views.

    ``cfg`` is any object with the fields it reads (a TrainConfig): arch, encoder_weights,
    proj_hidden_dim, proj_dim, ppm_layers, ppm_gamma, ppm_clamp, pos_ratio, ins_loss_weight,
    pixpro_weight, pixcontrast_weight, neg_ratio, temperature, concat_views.
    """

    num_views = 2

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        encoder = build_encoder(cfg.arch, cfg.encoder_weights)
        feat_dim = encoder.out_channels
        if cfg.pixpro_weight <= 0 and cfg.pixcontrast_weight <= 0:
            raise ValueError("at least one of pixpro_weight and pixcontrast_weight must be positive")
        self.online["encoder"] = encoder
        self.online["projector"] = MLP2d(feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        if cfg.pixpro_weight > 0:
            self.online["ppm"] = PixelPropagation(cfg.proj_dim, cfg.ppm_layers, cfg.ppm_gamma, cfg.ppm_clamp)
        if cfg.ins_loss_weight > 0:
            self.online["projector_instance"] = MLP2d(feat_dim, cfg.proj_hidden_dim, cfg.proj_dim)
            self.online["predictor"] = MLP2d(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.make_target(*(k for k in ("encoder", "projector", "projector_instance") if k in self.online))

    # -- forward --------------------------------------------------------------------------
    def _encode(self, encoder: nn.Module, view1: torch.Tensor, view2: torch.Tensor):
        if self.cfg.concat_views:
            return encoder(torch.cat([view1, view2])).chunk(2)
        return encoder(view1), encoder(view2)

    def forward(self, views, coords) -> MethodOutput:
        cfg, on = self.cfg, self.online
        (view1, view2), (coords1, coords2) = views, coords
        feat1, feat2 = self._encode(on["encoder"], view1, view2)
        proj1, proj2 = self._encode(on["projector"], feat1, feat2)
        with torch.no_grad():
            tfeat1, tfeat2 = self._encode(self.target["encoder"], view1, view2)
            tproj1, tproj2 = self._encode(self.target["projector"], tfeat1, tfeat2)
        stats = {}
        if cfg.pixpro_weight > 0:
            pred1, pred2 = on["ppm"](proj1), on["ppm"](proj2)
            pixel, npos, cos = pixpro_loss_with_stats(pred1, pred2, tproj1, tproj2, coords1, coords2, cfg.pos_ratio)
            stats["pixpro_loss"] = pixel.detach()
            if cfg.pixpro_weight != 1.0:
                pixel = cfg.pixpro_weight * pixel
        else:   # PixContrast alone: report the positive pairs of the raw projections
            with torch.no_grad():
                _, npos, cos = pixpro_loss_with_stats(proj1, proj2, tproj1, tproj2, coords1, coords2, cfg.pos_ratio)
            pixel = proj1.new_zeros((), dtype=torch.float32)
        stats["positive_pairs"], stats["positive_cosine"] = npos, cos
        if cfg.pixcontrast_weight > 0:
            contrast = pixcontrast_loss(proj1, proj2, tproj1, tproj2, coords1, coords2, cfg.pos_ratio,
                                        cfg.neg_ratio, cfg.temperature)
            stats["pixcontrast_loss"] = contrast.detach()
            pixel = pixel + cfg.pixcontrast_weight * contrast
        total = pixel
        if cfg.ins_loss_weight > 0:
            p1, p2 = self._encode(on["projector_instance"], feat1, feat2)
            p1, p2 = self._encode(on["predictor"], p1, p2)
            with torch.no_grad():
                z1, z2 = self._encode(self.target["projector_instance"], tfeat1, tfeat2)
            pool = lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1)
            ins = instance_loss(pool(p1), pool(p2), pool(z1), pool(z2))
            stats["instance_loss"] = ins.detach()
            total = pixel + cfg.ins_loss_weight * ins
        return MethodOutput(total, stats)
