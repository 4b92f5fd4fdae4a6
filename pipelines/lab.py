"""CIE L*a*b* and back, on batches of sRGB images (the colorization task's colour space).

sRGB (IEC 61966-2-1 transfer curve) <-> linear RGB <-> XYZ (D65) <-> CIE L*a*b*. The white
point is the sum of the matrix rows, so RGB white maps to exactly L = 100, a = b = 0.
"""
from __future__ import annotations

import torch

_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_LAB_DELTA = 6.0 / 29.0


def _lab_matrix(inverse: bool, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
    white = m.sum(1)
    if inverse:
        m = torch.linalg.inv(m)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return m.to(device=x.device, dtype=dtype), white.to(device=x.device, dtype=dtype)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB on the 0..1 scale -> Lab: L in [0, 100], a and b roughly in [-128, 128]."""
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb_to_lab takes a (B, 3, H, W) RGB batch, got shape {tuple(rgb.shape)}")
    x = rgb.float() if not rgb.is_floating_point() else rgb
    linear = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    m, white = _lab_matrix(False, x)
    xyz = _apply_matrix(m, linear) / white.view(1, 3, 1, 1)
    eps = _LAB_DELTA ** 3
    f = torch.where(xyz > eps, xyz.clamp(min=eps) ** (1.0 / 3.0), xyz / (3 * _LAB_DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`. Colours outside the sRGB gamut are clipped to [0, 1]
    unless ``clip`` is False (then the raw values show which ones are outside)."""
    if lab.dim() != 4 or lab.shape[1] != 3:
        raise ValueError(f"lab_to_rgb takes a (B, 3, H, W) Lab batch, got shape {tuple(lab.shape)}")
    fy = (lab[:, 0:1] + 16.0) / 116.0
    f = torch.cat([fy + lab[:, 1:2] / 500.0, fy, fy - lab[:, 2:3] / 200.0], dim=1)
    xyz = torch.where(f > _LAB_DELTA, f ** 3, 3 * _LAB_DELTA ** 2 * (f - 4.0 / 29.0))
    m, white = _lab_matrix(True, lab)
    linear = _apply_matrix(m, xyz * white.view(1, 3, 1, 1))
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear,
                       1.055 * linear.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055)
    return srgb.clamp(0.0, 1.0) if clip else srgb
