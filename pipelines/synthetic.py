"""A loader with no decoding at all, for benchmarks that must measure compute alone.

Views are random normalised tensors, already on the device and channels-last; a small
pool of them is made once and reused, so producing a batch costs (almost) nothing. Coords
are plausible: each comes from :mod:`pipelines.sampler` on a virtual 500x375 image, keyed
by the sample's index as in every backend. ``batches_per_epoch`` batches per epoch (default
50); data_dir is ignored, and so are the worker / decoding options the other backends take.
Deterministic for a seed. Each view size has two pooled tensors that alternate from batch
to batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from . import sampler
from .batch import Batch
from .epoch import EpochCursor
from .recipe import BYOL, Recipe

VIRTUAL_IMAGE = (375, 500)  # height, width


class SyntheticLoader:
    def __init__(self, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *, device="cpu",
                 seed: int = 0, batches_per_epoch: int = 50, rank: int = 0,
                 world_size: int = 1, num_workers: int | None = None, drop_last: bool = True,
                 on_corrupt: str = "skip", pin_memory=None, prefetch_factor=None,
                 persistent_workers=None, max_pixels=None):
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.batch_size, self.image_size, self.recipe = batch_size, image_size, recipe
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_epoch = batches_per_epoch
        g = torch.Generator().manual_seed(seed)
        self.spec = sampler.recipe_spec(recipe, image_size)
        self._pools = {size: [torch.randn((batch_size, 3, size, size), generator=g).clamp_(-2.5, 2.5)
                              .to(self.device).contiguous(memory_format=torch.channels_last) for _ in range(2)]
                       for size in sorted(set(recipe.output_sizes(image_size)))}
        self.cursor = EpochCursor(batches_per_epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.cursor.set(epoch, start_batch)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.cursor.begin_pass()
        h, w = VIRTUAL_IMAGE
        sizes = self.recipe.output_sizes(self.image_size)
        for b in range(start, self.batches_per_epoch):
            first = (epoch * self.world_size + self.rank) * self.batches_per_epoch + b
            samples = np.arange(first * self.batch_size, (first + 1) * self.batch_size)
            params = sampler.draw(self.spec, self.image_size, self.seed, epoch, samples,
                                  np.full(len(samples), h), np.full(len(samples), w))
            coords = tuple(sampler.coords_of(params[:, v]).to(self.device) for v in range(len(sizes)))
            views = tuple(self._pools[s][(b + v) % 2] for v, s in enumerate(sizes))
            yield Batch(views, coords, torch.from_numpy(samples).to(self.device), 0)


def build_synthetic_loader(data_dir=None, batch_size: int = 64, image_size: int = 224, recipe: Recipe = BYOL,
                           **options) -> SyntheticLoader:
    """Factory used by :func:`pipelines.build_loader`; ``data_dir`` is ignored."""
    return SyntheticLoader(batch_size, image_size, recipe, **options)
