"""Jigsaw puzzles (Noroozi & Favaro 2016): the nine tiles of a 3 x 3 grid, shuffled by one
permutation of a fixed set; the shared encoder sees each tile, a per-tile fc embeds it, and a
classifier over the concatenation names the permutation."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import MethodOutput
from .pretext import (PAPER_GRID, PretextMethod, TileGrid, accuracy, encode_tiles, gather_tiles, grid_for,
                      normalise_each_tile, random_grayscale, tile_origins)
from .registry import register_method

# The paper's schedule (ImageNet, Caffe): 350k iterations of 256 images (about 70 epochs),
# lr divided by 10 every 100k iterations.
TRAINING_DEFAULTS = {
    "optimizer": "sgd", "lr": 0.01, "batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4,
    "epochs": 70, "warmup_epochs": 0,
    "schedule": "step", "lr_milestones": (20, 40, 60), "lr_gamma": 0.1,
}

NUM_CELLS = 9


@functools.lru_cache(maxsize=1)
def all_permutations() -> np.ndarray:
    """All 9! = 362880 permutations of 0..8, lexicographic, (362880, 9) int8."""
    return np.array(list(itertools.permutations(range(NUM_CELLS))), dtype=np.int8)


@functools.lru_cache(maxsize=8)
def _permutation_set(n: int, seed: int) -> np.ndarray:
    perms = all_permutations()
    total = perms.shape[0]
    rng = np.random.default_rng(seed)
    # a seeded visiting order breaks ties between equally distant candidates
    order = rng.permutation(total)
    perms_o = perms[order]
    columns = np.ascontiguousarray(perms_o.T)                  # (9, 362880): contiguous compares
    chosen = np.empty(n, dtype=np.int64)
    min_dist = np.full(total, NUM_CELLS + 1, dtype=np.int32)   # to the nearest chosen one
    sum_dist = np.zeros(total, dtype=np.int32)                 # to all chosen ones
    same = np.empty(total, dtype=np.int32)
    key = np.empty(total, dtype=np.int64)
    pick = 0                                                   # first candidate of the seeded order
    for k in range(n):
        chosen[k] = pick
        same.fill(0)
        for i, value in enumerate(perms_o[pick]):
            same += columns[i] == value
        d = NUM_CELLS - same                                   # Hamming distance to the new pick
        np.minimum(min_dist, d, out=min_dist)
        sum_dist += d
        # the farthest from its nearest chosen permutation, then the farthest on average;
        # chosen ones have min_dist 0 and are never picked again
        np.multiply(min_dist, NUM_CELLS * (n + 1), out=key)
        key += sum_dist
        pick = int(np.argmax(key))
    return perms_o[chosen].astype(np.int64)


def permutation_set(n: int = 1000, seed: int = 0) -> torch.Tensor:
    """(n, 9) int64: ``n`` permutations of the nine cells picked greedily from all 9!, each
    the one whose Hamming distance to its nearest already-picked permutation is largest
    (ties: largest summed distance, then a seeded order). Deterministic for ``seed``; cached
    per process. Row ``k``, entry ``i`` is the cell whose tile goes to slot ``i``."""
    if not isinstance(n, int) or not 1 <= n <= all_permutations().shape[0]:
        raise ValueError(f"permutation set size must be an int in [1, 362880], got {n!r}")
    return torch.from_numpy(_permutation_set(n, int(seed)).copy())


def min_pairwise_hamming(perms: torch.Tensor) -> int:
    """Smallest Hamming distance between two rows of a (n, 9) set (9 for a single row)."""
    if perms.shape[0] < 2:
        return NUM_CELLS
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    d.fill_diagonal_(NUM_CELLS + 1)
    return int(d.min())


def jigsaw_tiles(x: torch.Tensor, perms: torch.Tensor, grid: TileGrid, generator=None):
    """Cut each view of (B, C, H, W) into the grid's nine tiles and shuffle them.

    Returns ``(tiles, labels, origins)``: (B, 9, C, t, t) tiles where slot ``i`` holds the tile
    of cell ``perms[label, i]``; (B,) permutation indices; (B, 9, 2) tile corners per cell
    (before shuffling).
    """
    b, _, h, w = x.shape
    origins = tile_origins(b, h, w, grid, x.device, generator)
    tiles = gather_tiles(x, origins, grid.tile)
    labels = torch.randint(0, perms.shape[0], (b,), generator=generator).to(x.device)
    order = perms.to(x.device)[labels]                                  # (B, 9)
    tiles = tiles[torch.arange(b, device=x.device)[:, None], order]
    return tiles, labels, origins


@register_method(
    "jigsaw", "pretext: the permutation of a 3 x 3 grid of tiles",
    defaults=dict(arch='resnet50', recipe='single', optimizer='sgd', base_lr=0.01,
                  weight_decay=0.0005, epochs=70, warmup_epochs=0, sgd_momentum=0.9, final_lr=0.0),
    settings=('jigsaw_permutations', 'tile_grayscale_p'))
class Jigsaw(PretextMethod):
    @classmethod
    def options_from(cls, cfg) -> dict:
        return {"num_permutations": cfg.jigsaw_permutations, "grayscale_p": cfg.tile_grayscale_p}

    def __init__(self, arch: str = "resnet50", encoder_weights: str | None = None, num_permutations: int = 1000,
                 permutation_seed: int = 0, grayscale_p: float = 0.66, tile_dim: int = 1024,
                 hidden_dim: int = 4096, grid: TileGrid = PAPER_GRID, **view_stats):
        super().__init__(arch, encoder_weights, **view_stats)
        if not 0.0 <= grayscale_p <= 1.0:
            raise ValueError(f"grayscale_p must be in [0, 1], got {grayscale_p}")
        self.grid, self.grayscale_p = grid, float(grayscale_p)
        self.register_buffer("permutations", permutation_set(num_permutations, permutation_seed))
        self.min_hamming = min_pairwise_hamming(self.permutations)
        self.online["tile_fc"] = nn.Sequential(nn.Linear(self.feat_dim, tile_dim), nn.ReLU(inplace=True))
        self.online["classifier"] = nn.Sequential(
            nn.Linear(NUM_CELLS * tile_dim, hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_permutations))

    def task(self, x: torch.Tensor, generator=None):
        """Normalised views -> (tiles ready for the encoder, labels)."""
        grid = grid_for(x.shape[-2], x.shape[-1], "jigsaw", self.grid)
        tiles, labels, _ = jigsaw_tiles(x, self.permutations, grid, generator)
        tiles = random_grayscale(self.to_unit(tiles.flatten(0, 1)).view_as(tiles), self.grayscale_p, generator)
        return normalise_each_tile(tiles), labels

    def forward(self, views, coords=None) -> MethodOutput:
        tiles, labels = self.task(self.single_view(views))
        feats = self.online["tile_fc"](encode_tiles(self.online["encoder"], tiles))   # (B, 9, D)
        logits = self.online["classifier"](feats.flatten(1))
        loss = F.cross_entropy(logits.float(), labels)
        return MethodOutput(loss, {"accuracy": accuracy(logits, labels)})
