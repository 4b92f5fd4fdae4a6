"""Relative patch location (Doersch et al. 2015): the centre tile of the 3 x 3 grid and one of
its eight neighbours; the pair's features, concatenated, go through fc 4096 + BN + ReLU and an
8-way classifier that names where the neighbour sits.

Its preset clips the gradient norm at 1. The neck's BN + ReLU outputs share a large positive
mean, so one SGD step moves every image's logits alike by about ``lr * |h|^2`` (|h|^2 ~ 2000 for
4096 units) times the batch's label-frequency noise: at lr 0.0125 (batch 32) the classifier
swings from one class to another and the loss climbs far above chance (ln 8) within 20 steps,
then to inf. Clipped, the same run stays at or below chance and starts to learn.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import MethodOutput
from .pretext import (PAPER_GRID, PretextMethod, TileGrid, accuracy, encode_tiles, gather_tiles, grid_for,
                      random_grayscale, tile_origins)
from .registry import register_method

# ImageNet schedule of the reference setting: 512 images a step, head decay 5x the trunk's.
TRAINING_DEFAULTS = {
    "optimizer": "sgd", "lr": 0.2, "batch_size": 512, "momentum": 0.9, "weight_decay": 1e-4,
    "head_weight_decay_mult": 5.0, "epochs": 70, "warmup_epochs": 5, "warmup_start_factor": 0.1,
    "schedule": "step", "lr_milestones": (30, 50), "lr_gamma": 0.1,
}

CENTRE = 4
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)   # label k: the neighbour in row-major cell NEIGHBOURS[k]
COLOUR_MODES = ("grayscale", "drop")


def relative_location_pairs(x: torch.Tensor, grid: TileGrid, all_neighbours: bool = False, generator=None):
    """Tile pairs of (B, C, H, W) views.

    Returns ``(centre, neighbour, labels, origins)``: (N, C, t, t) centre tiles and neighbour
    tiles, (N,) labels into :data:`NEIGHBOURS` and the (B, 9, 2) corners of all tiles. One random
    neighbour per view (N = B), or all eight (N = 8B, view-major) with ``all_neighbours``.
    """
    b, _, h, w = x.shape
    origins = tile_origins(b, h, w, grid, x.device, generator)
    if all_neighbours:
        labels = torch.arange(8, device=x.device).repeat(b)
        image = torch.arange(b, device=x.device).repeat_interleave(8)
    else:
        labels = torch.randint(0, 8, (b,), generator=generator).to(x.device)
        image = torch.arange(b, device=x.device)
    cell = torch.tensor(NEIGHBOURS, device=x.device)[labels]
    pair = torch.stack([origins[image, CENTRE], origins[image, cell]], 1)   # (N, 2, 2)
    tiles = gather_tiles(x, pair, grid.tile, image)
    return tiles[:, 0], tiles[:, 1], labels, origins


def drop_colour(tiles: torch.Tensor, noise_scale: float = 0.01, generator=None) -> torch.Tensor:
    """The paper's remedy for chromatic aberration: keep one random channel of each (N, 3, h, w)
    tile and replace the other two by Gaussian noise of ``noise_scale`` times its std."""
    n = tiles.shape[0]
    keep = torch.randint(0, 3, (n,), generator=generator).to(tiles.device)
    kept = tiles[torch.arange(n, device=tiles.device), keep][:, None]                # (N, 1, h, w)
    noise = torch.randn(tiles.shape, generator=generator).to(tiles.device)
    noise = noise * (noise_scale * kept.std(dim=(-2, -1), keepdim=True))
    is_kept = torch.arange(3, device=tiles.device).view(1, 3, 1, 1) == keep.view(n, 1, 1, 1)
    return torch.where(is_kept, kept.expand_as(tiles), noise)


@register_method(
    "relative_location", "pretext: where a neighbouring tile sits around the centre tile",
    defaults=dict(arch='resnet50', recipe='single', optimizer='sgd', base_lr=0.1,
                  weight_decay=0.0001, epochs=70, warmup_epochs=5, sgd_momentum=0.9,
                  clip_grad_norm=1.0, final_lr=0.0),
    settings=('tile_grayscale_p', 'relative_location_colour'))
class RelativeLocation(PretextMethod):
    @classmethod
    def options_from(cls, cfg) -> dict:
        return {"colour": cfg.relative_location_colour, "grayscale_p": cfg.tile_grayscale_p}

    def __init__(self, arch: str = "resnet50", encoder_weights: str | None = None, colour: str = "grayscale",
                 grayscale_p: float = 0.66, all_neighbours: bool = False, hidden_dim: int = 4096,
                 grid: TileGrid = PAPER_GRID, **view_stats):
        super().__init__(arch, encoder_weights, **view_stats)
        if colour not in COLOUR_MODES:
            raise ValueError(f"relative_location colour must be one of {COLOUR_MODES}, got {colour!r}")
        if not 0.0 <= grayscale_p <= 1.0:
            raise ValueError(f"grayscale_p must be in [0, 1], got {grayscale_p}")
        self.colour, self.grayscale_p, self.all_neighbours, self.grid = colour, float(grayscale_p), all_neighbours, grid
        self.online["neck"] = nn.Sequential(nn.Linear(2 * self.feat_dim, hidden_dim, bias=False),
                                            nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True))
        self.online["classifier"] = nn.Linear(hidden_dim, 8)

    def task(self, x: torch.Tensor, generator=None):
        """Normalised views -> ((N, 2, C, t, t) centre/neighbour pairs, (N,) labels)."""
        grid = grid_for(x.shape[-2], x.shape[-1], "relative_location", self.grid)
        centre, neighbour, labels, _ = relative_location_pairs(x, grid, self.all_neighbours, generator)
        pairs = torch.stack([centre, neighbour], 1)
        if self.colour == "drop":
            return drop_colour(pairs.flatten(0, 1), generator=generator).view_as(pairs), labels
        unit = self.to_unit(pairs.flatten(0, 1)).view_as(pairs)
        unit = random_grayscale(unit, self.grayscale_p, generator)          # one draw per pair
        return self.from_unit(unit.flatten(0, 1)).view_as(pairs), labels

    def forward(self, views, coords=None) -> MethodOutput:
        pairs, labels = self.task(self.single_view(views))
        feats = encode_tiles(self.online["encoder"], pairs)                 # (N, 2, D)
        logits = self.online["classifier"](self.online["neck"](feats.flatten(1)))
        loss = F.cross_entropy(logits.float(), labels)
        return MethodOutput(loss, {"accuracy": accuracy(logits, labels)})
