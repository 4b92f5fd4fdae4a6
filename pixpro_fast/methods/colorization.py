"""Colorization (Zhang et al. 2016): the encoder sees the L channel of CIE Lab and a light
decoder predicts the ab channels at 1/4 resolution, as a distribution over the 313 bins of a
10-unit ab grid that cover the sRGB gamut (:func:`ab_bins`; targets soft-encoded over the
nearest bins, class-rebalanced cross-entropy) or, as a plain variant, by regression.

The paper soft-encodes each target over its 5 nearest bins; the official training layer uses
10 (``num_neighbours``, ``--colorization-neighbours``)."""
from __future__ import annotations

import functools
import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.lab import rgb_to_lab

from .contract import MethodOutput
from .pretext import PretextMethod, accuracy
from .registry import register_method

# The paper's schedule (ImageNet): Adam, 450k iterations of 40 images (about 14 epochs),
# lr lowered to 1e-5 at 200k and 3e-6 at 375k iterations.
TRAINING_DEFAULTS = {
    "optimizer": "adam", "lr": 3e-5, "batch_size": 40, "betas": (0.9, 0.99), "weight_decay": 1e-3,
    "epochs": 14, "warmup_epochs": 0,
    "schedule": "step", "lr_milestones": (6, 12), "lr_gammas": (1 / 3, 0.3),
}

GRID_STEP = 10.0
NUM_BINS = 313     # what ab_bins() gives on the 10-unit grid (the config's bound on the neighbour count)
MODES = ("classification", "regression")
AB_SCALE = 110.0   # regression targets are ab / AB_SCALE, roughly [-1, 1]


def rgb_cube_faces(levels: int) -> torch.Tensor:
    """(3, 6 * levels**2) float64 RGB on 0..1: the six faces of the RGB cube, each sampled on a
    ``levels`` x ``levels`` grid. The Lab image of the cube's surface bounds the gamut's solid,
    so the convex hull of its ab projection is that of the whole gamut."""
    v = torch.linspace(0.0, 1.0, levels, dtype=torch.float64)
    u, w = (t.reshape(-1) for t in torch.meshgrid(v, v, indexing="ij"))
    faces = []
    for channel in range(3):
        for value in (0.0, 1.0):
            face = [u, w]
            face.insert(channel, torch.full_like(u, value))
            faces.append(torch.stack(face))
    return torch.cat(faces, 1)


def convex_hull(points: torch.Tensor) -> torch.Tensor:
    """(N, 2) points -> (M, 2) vertices of their convex hull, counter-clockwise, no three
    collinear (Andrew's monotone chain)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return torch.tensor(pts, dtype=points.dtype)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]
    return torch.tensor(chain(pts) + chain(reversed(pts)), dtype=points.dtype)


@functools.lru_cache(maxsize=4)
def _ab_bins(levels: int, step: float) -> torch.Tensor:
    rgb = rgb_cube_faces(levels)
    ab = rgb_to_lab(rgb.reshape(1, 3, -1, 1)).reshape(3, -1)[1:].T               # (N, 2)
    hull = convex_hull(ab)
    # the hull's outward edge normals and the two axes: the separating axes of a square and a
    # convex polygon, so a grid point passes every test below exactly when its square of
    # side 2 * step meets the hull
    edges = hull.roll(-1, 0) - hull
    normals = torch.stack([edges[:, 1], -edges[:, 0]], 1)
    normals = normals / normals.norm(dim=1, keepdim=True)
    axes = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    u = torch.cat([normals, axes])
    reach = (hull @ u.T).amax(0) + step * u.abs().sum(1)                          # support of hull + square
    span = math.ceil(float(ab.abs().max()) / step) + 1
    r = torch.arange(-span, span + 1, dtype=torch.float64) * step
    grid = torch.stack([t.reshape(-1) for t in torch.meshgrid(r, r, indexing="ij")], 1)   # sorted by a, then b
    keep = ((grid @ u.T) <= reach + 1e-9).all(1)
    return grid[keep].float()


def ab_bins(levels: int = 32, step: float = GRID_STEP) -> torch.Tensor:
    """(Q, 2) ab bins (a, b), multiples of ``step``, sorted by a, then b: the grid points whose
    square of side ``2 * step`` (all four grid cells around the point) meets the convex hull of
    the sRGB gamut's ab projection -- every grid point that bilinear interpolation between grid
    points needs for some ab value inside that hull. With ``step`` 10 these are the 313 points
    of the reference implementation (``pts_in_hull.npy``, a from -90 to 100, b from -110 to
    100), in its order. The hull is that of the RGB cube's faces sampled at ``levels`` values
    per side and converted to Lab (its vertices are the six primaries and secondaries plus the
    curved green-cyan-blue rim, which 8 levels already trace closely enough). Deterministic."""
    return _ab_bins(int(levels), float(step)).clone()


def nearest_bins(ab: torch.Tensor, bins: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) ab values -> (N, k) distances and indices of the k nearest bins."""
    d = torch.cdist(ab.float(), bins.to(ab.device).float())
    dist, idx = d.topk(k, dim=1, largest=False)
    return dist, idx


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """(B, 2, h, w) ab -> (B, Q, h, w): a Gaussian (``sigma``) of the distance to each of the
    ``k`` nearest bins, normalised to sum to 1 per pixel; the other bins get 0."""
    b, _, h, w = ab.shape
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    dist, idx = nearest_bins(flat, bins, k)
    wgt = torch.exp(-dist.square() / (2 * sigma * sigma))
    wgt = wgt / wgt.sum(1, keepdim=True)
    out = torch.zeros(flat.shape[0], bins.shape[0], device=ab.device, dtype=wgt.dtype)
    out.scatter_(1, idx, wgt)
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)


def estimate_ab_prior(batches: Iterable[torch.Tensor], bins: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """(Q,) empirical distribution of the ab bins over RGB batches ((B, 3, H, W) on 0..1): each
    pixel counts for its nearest bin; the histogram is smoothed by a Gaussian (``sigma``) over
    bin distance in ab and sums to 1."""
    counts = torch.zeros(bins.shape[0], dtype=torch.float64)
    seen = False
    for rgb in batches:
        ab = rgb_to_lab(rgb.float())[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
        _, idx = nearest_bins(ab, bins, 1)
        counts += torch.bincount(idx[:, 0].cpu(), minlength=bins.shape[0]).double()
        seen = True
    if not seen or counts.sum() == 0:
        raise ValueError("estimate_ab_prior needs at least one non-empty batch")
    p = counts / counts.sum()
    if sigma > 0:
        c = bins.double()
        kernel = torch.exp(-torch.cdist(c, c).square() / (2 * sigma * sigma))
        p = kernel @ p
        p = p / p.sum()
    return p.float()


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """``w ~ ((1 - lam) * prior + lam / Q) ** -1``, scaled so that ``sum(prior * w) = 1``."""
    q = prior.numel()
    w = 1.0 / ((1.0 - lam) * prior + lam / q)
    return w / (prior * w).sum()


def scaled_lightness(lab: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) Lab -> the encoder's input (B, 1, H, W): L (0..100) scaled to [-1, 1]."""
    return (lab[:, :1] - 50.0) / 50.0


def lightness_input(rgb01: torch.Tensor) -> torch.Tensor:
    """RGB on the 0..1 scale -> what the colorization encoder sees (fp32, whatever the autocast)."""
    with torch.autocast(rgb01.device.type, enabled=False):
        return scaled_lightness(rgb_to_lab(rgb01.float()))


class ColorizationDecoder(nn.Module):
    """Encoder map (stride 32) -> ``out_dim`` channels at a given size: 1x1 reduce, bilinear
    upsampling, one 3x3 conv, 1x1 out."""

    def __init__(self, in_dim: int, out_dim: int, dim: int = 256):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.refine = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
                                    nn.ReLU(inplace=True))
        self.out = nn.Conv2d(dim, out_dim, 1)

    def forward(self, feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(self.reduce(feat), size=size, mode="bilinear", align_corners=False)
        return self.out(self.refine(x))


@register_method(
    "colorization", "pretext: the ab colour channels from the L channel (1-channel encoder)",
    defaults=dict(arch='resnet50', recipe='single', optimizer='adamw', base_lr=0.000192,
                  weight_decay=0.001, epochs=14, warmup_epochs=0, sgd_momentum=0.9, final_lr=0.0),
    settings=('colorization_mode', 'colorization_neighbours'),
    encoder="resnet_l")
class Colorization(PretextMethod):
    encoder_input = staticmethod(lightness_input)

    @classmethod
    def options_from(cls, cfg) -> dict:
        return {"mode": cfg.colorization_mode, "num_neighbours": cfg.colorization_neighbours}

    def __init__(self, arch: str = "resnet50", encoder_weights: str | None = None, mode: str = "classification",
                 num_neighbours: int = 5, sigma: float = 5.0, rebalance_lambda: float = 0.5,
                 decoder_dim: int = 256, **view_stats):
        if mode not in MODES:
            raise ValueError(f"colorization mode must be one of {MODES}, got {mode!r}")
        super().__init__(arch, encoder_weights, in_channels=1, **view_stats)
        bins = ab_bins()
        q = bins.shape[0]
        if not 1 <= int(num_neighbours) <= q:
            raise ValueError(f"colorization num_neighbours must be between 1 and the {q} ab bins, got {num_neighbours}")
        self.mode, self.k, self.sigma, self.lam = mode, int(num_neighbours), float(sigma), float(rebalance_lambda)
        self.register_buffer("bins", bins)
        # the empirical prior: uniform until estimate_ab_prior's result is set
        self.register_buffer("prior", torch.full((q,), 1.0 / q))
        self.register_buffer("class_weights", torch.ones(q))
        self.online["decoder"] = ColorizationDecoder(self.feat_dim, q if mode == "classification" else 2, decoder_dim)

    def set_prior(self, prior: torch.Tensor) -> None:
        if prior.shape != self.prior.shape:
            raise ValueError(f"prior must have shape {tuple(self.prior.shape)}, got {tuple(prior.shape)}")
        self.prior.copy_(prior)
        self.class_weights.copy_(rebalancing_weights(self.prior, self.lam))

    def task(self, x: torch.Tensor):
        """Normalised views -> (encoder input (B, 1, H, W), ab target at 1/4 resolution), in
        fp32 whatever the ambient autocast."""
        h, w = x.shape[-2:]
        if h < 4 or w < 4:
            raise ValueError(f"colorization needs views of at least 4x4 px, got {h}x{w}")
        with torch.autocast(x.device.type, enabled=False):
            lab = rgb_to_lab(self.to_unit(x.float()))
            ab = F.interpolate(lab[:, 1:], size=(h // 4, w // 4), mode="area")
        return scaled_lightness(lab), ab

    def targets(self, ab: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) ab -> (B, Q, h, w) soft targets over the ``k`` nearest bins (fp32)."""
        with torch.autocast(ab.device.type, enabled=False):
            return soft_encode(ab.float(), self.bins, self.k, self.sigma)

    def forward(self, views, coords=None) -> MethodOutput:
        x = self.single_view(views)
        lightness, ab = self.task(x)
        feat = self.online["encoder"](lightness.contiguous(memory_format=torch.channels_last))
        out = self.online["decoder"](feat, ab.shape[-2:]).float()
        if self.mode == "regression":
            loss = F.mse_loss(out, ab / AB_SCALE)
            return MethodOutput(loss, {})
        target = self.targets(ab)                                                   # (B, Q, h, w)
        hard = target.argmax(1)
        pixel_ce = -(target * F.log_softmax(out, dim=1)).sum(1)                     # (B, h, w)
        loss = (self.class_weights[hard] * pixel_ce).mean()
        return MethodOutput(loss, {"accuracy": accuracy(out, hard)})
