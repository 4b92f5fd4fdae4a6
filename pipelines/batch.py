"""What every loader yields, whatever the backend."""
from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence

import torch

from .image_header import DEFAULT_MAX_PIXELS, check_max_pixels


class Batch:
    """One batch of a view plan: ``views[k]`` is view k of every sample, (B, 3, H_k, W_k)
    normalised, channels-last, on the training device; ``coords[k]`` its crop boxes (B, 4)
    float32 per the contract in :mod:`pipelines.geometry`; ``index`` the dataset indices of
    the samples (B,) int64; ``skipped`` how many unreadable images were replaced.

    Built as ``Batch(views, coords, index, skipped)``; ``view1`` / ``view2`` / ``coords1`` /
    ``coords2`` name the first two views.
    """
    __slots__ = ("views", "coords", "index", "skipped")

    def __init__(self, *args, views: Sequence[torch.Tensor] | None = None,
                 coords: Sequence[torch.Tensor] | None = None, index: torch.Tensor | None = None,
                 skipped: int = 0):
        if args:
            names = ("views", "coords", "index", "skipped")
            if len(args) > 4:
                raise TypeError("Batch(views, coords, index[, skipped])")
            given = dict(zip(names, args))
            views, coords = given.get("views", views), given.get("coords", coords)
            index, skipped = given.get("index", index), given.get("skipped", skipped)
        if views is None or coords is None or index is None:
            raise TypeError("Batch needs views, coords and index")
        # contiguous boxes: a compiled step sees the same strides from every loader (no recompilation)
        self.views, self.coords = tuple(views), tuple(c.contiguous() for c in coords)
        if len(self.views) != len(self.coords) or not self.views:
            raise ValueError(f"{len(self.views)} views but {len(self.coords)} coords")
        self.index, self.skipped = index, int(skipped)

    @property
    def view1(self) -> torch.Tensor:
        return self.views[0]

    @property
    def view2(self) -> torch.Tensor:
        return self.views[1]

    @property
    def coords1(self) -> torch.Tensor:
        return self.coords[0]

    @property
    def coords2(self) -> torch.Tensor:
        return self.coords[1]

    @property
    def num_views(self) -> int:
        return len(self.views)

    def __len__(self) -> int:
        return self.views[0].shape[0]

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(v.shape)) for v in self.views)
        return f"Batch(views=[{shapes}], skipped={self.skipped})"

    def replace(self, **changes) -> "Batch":
        """A copy with some of ``views``, ``coords``, ``index``, ``skipped`` changed."""
        kw = {name: getattr(self, name) for name in self.__slots__}
        kw.update(changes)
        return Batch(**kw)

    def to(self, device, non_blocking: bool = True) -> "Batch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)
        return Batch(tuple(mv(v).contiguous(memory_format=torch.channels_last) for v in self.views),
                     tuple(mv(c) for c in self.coords), mv(self.index), self.skipped)


class Loader(Protocol):
    """The interface the training engine relies on.

    ``set_epoch(e, start_batch)`` selects the epoch's (deterministic) order and the batch
    to start from, so a resumed run continues the same sequence; ``len()`` is the number
    of batches one epoch yields on this rank.
    """
    batch_size: int

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __iter__(self) -> Iterator[Batch]: ...


def check_loader_options(on_corrupt: str, rank: int, world_size: int, seed: int,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The options every backend takes, checked alike: a bad value is a ValueError naming it."""
    check_max_pixels(max_pixels)
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


@contextlib.contextmanager
def keep_torch_threads():
    """Put torch's process-wide intra-op thread count back after the block. FFCV sets it to
    its own worker count when it is imported, when a Loader is built and when a pass starts;
    without this the training step would lose the cores it was given."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
