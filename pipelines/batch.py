"""What every loader yields, whatever the backend."""
from __future__ import annotations

import contextlib

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass
class Batch:
    """Two normalised views (B, 3, H, W) in channels-last memory, on the training device,
    their crop boxes (B, 4) float32 per the contract in ``pixpro_fast.geometry``, the
    dataset indices of the samples (B,), and how many unreadable images were replaced."""
    view1: torch.Tensor
    view2: torch.Tensor
    coords1: torch.Tensor
    coords2: torch.Tensor
    index: torch.Tensor
    skipped: int = 0

    def __len__(self) -> int:
        return self.view1.shape[0]

    @property
    def views(self) -> tuple[torch.Tensor, ...]:
        return (self.view1, self.view2)

    @property
    def coords(self) -> tuple[torch.Tensor, ...]:
        return (self.coords1, self.coords2)

    def to(self, device, non_blocking: bool = True) -> "Batch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)
        return Batch(mv(self.view1).contiguous(memory_format=torch.channels_last),
                     mv(self.view2).contiguous(memory_format=torch.channels_last),
                     mv(self.coords1), mv(self.coords2), mv(self.index), self.skipped)


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


def check_loader_options(on_corrupt: str, rank: int, world_size: int, seed: int) -> None:
    """The options every backend takes, checked alike: a bad value is a ValueError naming it."""
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
