"""Denoising autoencoder (Vincent et al. 2008): the encoder sees a corrupted view, a light
upsampling decoder reconstructs the clean one, L2 loss. Only the encoder is kept."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import MethodOutput
from .pretext import PretextMethod
from .registry import register_method

# The paper trains by plain stochastic gradient descent without weight decay; on images this
# engine's schedule is used at that lr.
TRAINING_DEFAULTS = {
    "optimizer": "sgd", "lr": 0.01, "batch_size": 256, "momentum": 0.9, "weight_decay": 0.0,
    "epochs": 100, "warmup_epochs": 0, "schedule": "cosine",
}

NOISES = ("masking", "gaussian")


def corrupt(x01: torch.Tensor, noise: str, p: float = 0.3, sigma: float = 0.1, generator=None) -> torch.Tensor:
    """0..1 batch -> corrupted copy: ``masking`` sets each value to 0 with probability ``p``;
    ``gaussian`` adds N(0, sigma^2) to each value (not clipped)."""
    if noise == "masking":
        keep = (torch.rand(x01.shape, generator=generator) >= p).to(x01.device)
        return x01 * keep
    if noise == "gaussian":
        return x01 + sigma * torch.randn(x01.shape, generator=generator).to(x01.device)
    raise ValueError(f"denoising_ae noise must be one of {NOISES}, got {noise!r}")


class UpsamplingDecoder(nn.Module):
    """Stride-32 map -> 3-channel image: five (2x bilinear, 3x3 conv, BN, ReLU) stages that
    halve the width from ``dim``, then a 3x3 conv to RGB, resized to the view's size."""

    def __init__(self, in_dim: int, dim: int = 256, stages: int = 5, out_dim: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        width = dim
        for _ in range(stages):
            nxt = max(width // 2, 16)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(width, nxt, 3, padding=1, bias=False), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            width = nxt
        layers.append(nn.Conv2d(width, out_dim, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.net(feat)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


@register_method(
    "denoising_ae", "pretext: reconstruct the clean view from a corrupted one",
    defaults=dict(arch='resnet50', recipe='single', optimizer='sgd', base_lr=0.01,
                  weight_decay=0.0, epochs=100, warmup_epochs=0, sgd_momentum=0.9, final_lr=0.0),
    settings=('denoising_noise', 'denoising_mask_p', 'denoising_sigma'))
class DenoisingAE(PretextMethod):
    @classmethod
    def options_from(cls, cfg) -> dict:
        return {"noise": cfg.denoising_noise, "mask_p": cfg.denoising_mask_p, "sigma": cfg.denoising_sigma}

    def __init__(self, arch: str = "resnet50", encoder_weights: str | None = None, noise: str = "masking",
                 mask_p: float = 0.3, sigma: float = 0.1, decoder_dim: int = 256, **view_stats):
        super().__init__(arch, encoder_weights, **view_stats)
        if noise not in NOISES:
            raise ValueError(f"denoising_ae noise must be one of {NOISES}, got {noise!r}")
        if not 0.0 <= mask_p < 1.0:
            raise ValueError(f"mask_p must be in [0, 1), got {mask_p}")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        self.noise, self.mask_p, self.sigma = noise, float(mask_p), float(sigma)
        self.online["decoder"] = UpsamplingDecoder(self.feat_dim, decoder_dim)

    def task(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Normalised views -> normalised corrupted views (the noise acts on the 0..1 scale)."""
        return self.from_unit(corrupt(self.to_unit(x), self.noise, self.mask_p, self.sigma, generator))

    def forward(self, views, coords=None) -> MethodOutput:
        x = self.single_view(views)
        noisy = self.task(x)
        feat = self.online["encoder"](noisy.contiguous(memory_format=torch.channels_last))
        recon = self.online["decoder"](feat, x.shape[-2:]).float()
        loss = F.mse_loss(recon, x)
        return MethodOutput(loss, {"noisy_mse": F.mse_loss(noisy.detach(), x)})
