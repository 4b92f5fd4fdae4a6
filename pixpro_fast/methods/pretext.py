"""What the classic pretext tasks share: one view per image (the ``single`` plan), an encoder,
the view back on the 0..1 scale, and the 3 x 3 tile grid of jigsaw and relative location.

Every task input is built on the view's device from the whole batch at once: random draws are
tensors of per-image (or per-tile) parameters, and tiles are read with one gather.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from pipelines.colour import grey, normalise, unnormalise
from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, get_recipe

from ..encoder import build_encoder
from .contract import Method


class PretextMethod(Method):
    """Base of the pretext tasks: ``online["encoder"]``, the view check, un-normalisation.

    The views arrive normalised by ``(x - mean) / std``; ``mean`` and ``std`` are the ones the
    view plan used (:func:`view_stats`: the config's recipe), so a task that needs pixel values
    (grayscale, Lab, noise on 0..1) can undo it and redo it.
    """

    num_views = 1

    def __init__(self, arch: str = "resnet50", encoder_weights: str | None = None, in_channels: int = 3,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.online["encoder"] = build_encoder(arch, encoder_weights, in_channels=in_channels)
        self.feat_dim = self.online["encoder"].out_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> "PretextMethod":
        """The task with the config's encoder and its own options (:meth:`options_from`)."""
        return cls(arch=cfg.arch, encoder_weights=cfg.encoder_weights, **view_stats(cfg), **cls.options_from(cfg))

    @classmethod
    def options_from(cls, cfg) -> dict:
        """The task's constructor options from a TrainConfig (its paper's defaults there)."""
        return {}

    def single_view(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """The one view of the batch as float (B, 3, H, W); a ValueError for any other count."""
        if isinstance(views, torch.Tensor):
            raise ValueError(f"{type(self).__name__} takes a sequence of views, got a bare tensor")
        self.check_views(len(views))
        x = views[0]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} needs (B, 3, H, W) views, got shape {tuple(x.shape)}")
        return x.float()

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) view -> RGB on the 0..1 scale (float32)."""
        return unnormalise(x, self.mean, self.std)

    def from_unit(self, x01: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) on the 0..1 scale -> normalised as the views are (float32)."""
        return normalise(x01.float(), self.mean, self.std)

    def export_encoder(self) -> torch.nn.Module:
        """The trained encoder alone (what transfers downstream)."""
        return self.online["encoder"]


def view_stats(cfg) -> dict:
    """``mean`` and ``std`` of the recipe a TrainConfig's loader normalises its views with."""
    recipe = get_recipe(cfg.recipe)
    return {"mean": recipe.mean, "std": recipe.std}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == labels).float().mean()


# --------------------------------------------------------------------------- tile grid


@dataclass(frozen=True)
class TileGrid:
    """A square of ``grid * cell`` px split into cells, one ``tile`` px tile per cell.

    The papers' numbers are a 255 px square, 85 px cells and 64 px tiles (jitter up to 21 px).
    """

    square: int = 255
    cell: int = 85
    tile: int = 64
    grid: int = 3

    @property
    def jitter(self) -> int:
        """Largest offset of a tile inside its cell."""
        return self.cell - self.tile

    @property
    def cells(self) -> int:
        return self.grid * self.grid


PAPER_GRID = TileGrid()
MIN_TILE = 8  # px; a smaller tile leaves a ResNet nothing to see after its stem


def grid_for(height: int, width: int, task: str, base: TileGrid = PAPER_GRID, min_tile: int = MIN_TILE) -> TileGrid:
    """The tile grid for views of ``height x width``.

    Views at least ``base.square`` px on each side use the paper's grid as it is (the square is
    a random crop of the view). Smaller views scale it down proportionally: the square becomes
    the largest multiple of ``grid`` that fits, ``cell = square / grid`` and
    ``tile = floor(base.tile * square / base.square)``, so the tile keeps its share of the
    cell (64/85) and the jitter its remainder. A view that would give a tile under ``min_tile``
    px is an error.
    """
    side = min(height, width)
    if side >= base.square:
        return base
    square = side // base.grid * base.grid
    tile = base.tile * square // base.square
    if tile < min_tile:
        need = math.ceil(min_tile * base.square / base.tile)
        need = math.ceil(need / base.grid) * base.grid
        raise ValueError(f"{task}: views of {height}x{width} px are too small for the {base.grid}x{base.grid} "
                         f"tile grid (tiles of {tile} px); it needs at least {need} px on each side "
                         f"for tiles of {min_tile} px")
    return TileGrid(square=square, cell=square // base.grid, tile=tile, grid=base.grid)


def tile_origins(batch: int, height: int, width: int, grid: TileGrid, device, generator=None) -> torch.Tensor:
    """(B, cells, 2) top-left corners (y, x) in the view of each cell's tile, row-major cells.

    The square sits at a random position in the view; each tile at a random offset in
    ``[0, jitter]`` in its cell, drawn per tile and per axis.
    """
    def randint(high, shape):
        return torch.randint(0, high + 1, shape, generator=generator, device="cpu").to(device)

    square = torch.stack([randint(height - grid.square, (batch,)), randint(width - grid.square, (batch,))], 1)
    r = torch.arange(grid.grid, device=device)
    cell = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(1, grid.cells, 2) * grid.cell
    return square[:, None, :] + cell + randint(grid.jitter, (batch, grid.cells, 2))


def gather_tiles(x: torch.Tensor, origins: torch.Tensor, size: int, image: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) and (N, T, 2) corners -> (N, T, C, size, size), one indexing op. Row ``n``
    of ``origins`` reads view ``image[n]`` (default: view ``n``)."""
    b, t = origins.shape[:2]
    ar = torch.arange(size, device=x.device)
    rows = (origins[..., 0:1] + ar).view(b, t, size, 1)
    cols = (origins[..., 1:2] + ar).view(b, t, 1, size)
    bidx = (torch.arange(b, device=x.device) if image is None else image).view(b, 1, 1, 1)
    # advanced indices on dims 0, 2, 3 with a slice on dim 1: the result is (B, T, size, size, C)
    return x[bidx, :, rows, cols].permute(0, 1, 4, 2, 3)


def random_grayscale(x01: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Each image of a (B, 3, ...) 0..1 batch replaced by its luma (3 equal channels) with
    probability ``p``; the tiles of one image share the draw (index the batch first)."""
    if p <= 0:
        return x01
    take = (torch.rand(x01.shape[0], generator=generator) < p).to(x01.device)
    shape = (-1,) + (1,) * (x01.dim() - 1)
    flat = x01.reshape(-1, 3, *x01.shape[-2:]) if x01.dim() == 5 else x01
    g = grey(flat).expand_as(flat).reshape(x01.shape)
    return torch.where(take.view(shape), g, x01)


def normalise_each_tile(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(..., C, h, w) tiles, each channel of each tile to zero mean and unit std."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / std.clamp(min=eps)


def encode_tiles(encoder: torch.nn.Module, tiles: torch.Tensor) -> torch.Tensor:
    """(B, T, C, h, w) -> (B, T, D): every tile through the shared encoder, average-pooled."""
    b, t = tiles.shape[:2]
    flat = tiles.reshape(b * t, *tiles.shape[2:]).contiguous(memory_format=torch.channels_last)
    return F.adaptive_avg_pool2d(encoder(flat), 1).flatten(1).view(b, t, -1)
