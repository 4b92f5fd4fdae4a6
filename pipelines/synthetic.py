"""A loader with no decoding at all, for benchmarks that must measure compute alone.

Views are random normalised tensors, already on the device and channels-last; a small
pool of them is made once and reused, so producing a batch costs (almost) nothing. Coords
are plausible: each comes from the recipe's crop sampler on a virtual 500x375 image, with
the recipe's flip rate. ``batches_per_epoch`` batches per epoch (default 50); data_dir is
ignored, and so are the worker / decoding options the other backends take. Deterministic
for a seed. The two pooled tensors alternate between view1 and view2 from batch to batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pixpro_fast.geometry import window_to_coords

from .batch import Batch
from .epoch import EpochCursor
from .crop import sample_crop
from .recipe import BYOL, Recipe

VIRTUAL_IMAGE = (375, 500)  # height, width


class SyntheticLoader:
    def __init__(self, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *, device="cpu",
                 seed: int = 0, batches_per_epoch: int = 50, rank: int = 0,
                 world_size: int = 1, num_workers: int | None = None, drop_last: bool = True,
                 on_corrupt: str = "skip", pin_memory=None, prefetch_factor=None,
                 persistent_workers=None):
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.batch_size, self.image_size, self.recipe = batch_size, image_size, recipe
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_epoch = batches_per_epoch
        g = torch.Generator().manual_seed(seed)
        self._pool = [torch.randn((batch_size, 3, image_size, image_size), generator=g).clamp_(-2.5, 2.5)
                      .to(self.device).contiguous(memory_format=torch.channels_last) for _ in range(2)]
        self.cursor = EpochCursor(batches_per_epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.cursor.set(epoch, start_batch)

    def _coords(self, rng: np.random.Generator) -> torch.Tensor:
        h, w = VIRTUAL_IMAGE
        rows = []
        for _ in range(self.batch_size):
            for view in self.recipe.views:
                top, left, ch, cw = sample_crop(rng, h, w, view.crop_scale, view.crop_ratio)
                rows.append(window_to_coords(top, left, ch, cw, h, w, bool(rng.random() < view.flip_p)))
        return torch.tensor(rows, dtype=torch.float32).view(self.batch_size, 2, 4)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.cursor.begin_pass()
        for b in range(start, self.batches_per_epoch):
            rng = np.random.default_rng((self.seed, epoch, self.rank, b))
            coords = self._coords(rng).to(self.device)
            first = (epoch * self.world_size + self.rank) * self.batches_per_epoch + b
            index = torch.arange(first * self.batch_size, (first + 1) * self.batch_size, device=self.device)
            v1, v2 = (self._pool[0], self._pool[1]) if b % 2 == 0 else (self._pool[1], self._pool[0])
            yield Batch(v1, v2, coords[:, 0], coords[:, 1], index, 0)


def build_synthetic_loader(data_dir=None, batch_size: int = 64, image_size: int = 224, recipe: Recipe = BYOL,
                           **options) -> SyntheticLoader:
    """Factory used by :func:`pipelines.build_loader`; ``data_dir`` is ignored."""
    return SyntheticLoader(batch_size, image_size, recipe, **options)
