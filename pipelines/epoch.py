"""Which epoch, and which batch of it, a loader's next pass reads: one rule for every backend.

``set_epoch(e, k)`` pins the next pass to epoch ``e`` from batch ``k`` (a resumed run asks
for the batch after the last one it trained on). A pass begun without a ``set_epoch`` since
the previous pass follows on from it: the next epoch, from its first batch. So a plain
``for epoch ...: for batch in loader`` loop sees new orders and new augmentations every
pass, and a training engine that calls ``set_epoch`` keeps full control.

The cursor is read once per pass, in the loader's ``__iter__``; whatever the backend calls
underneath (PyTorch's DataLoader asks its sampler for an iterator more than once per pass)
sees the same epoch and offset.
"""
from __future__ import annotations

import numpy as np


class EpochCursor:
    def __init__(self, num_batches: int):
        self.num_batches = int(num_batches)
        self.epoch = 0          # the epoch of the pass in progress (or the next, when pinned)
        self.start_batch = 0    # the batch the pass in progress began at
        self._pinned = True     # the first pass reads epoch 0 from batch 0

    def set(self, epoch: int, start_batch: int = 0) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        self.epoch, self.start_batch, self._pinned = int(epoch), int(start_batch), True

    def begin_pass(self) -> tuple[int, int]:
        """(epoch, first batch) of the pass that starts now."""
        if not self._pinned:
            self.epoch, self.start_batch = self.epoch + 1, 0
        self._pinned = False
        return self.epoch, self.start_batch


# --------------------------------------------------------------------------- order and sharding

def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True):
    """The global order of dataset indices for an epoch (identical on every rank)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng((seed, epoch, 0x5EED)).permutation(n)


def shard_positions(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool):
    """Positions in the epoch order that this rank reads, in reading order.

    Rank r takes positions r, r + world_size, ... drop_last=True: every rank gets the same
    number of full batches, ``n // (world_size * batch_size)``; the few samples left over
    are skipped this epoch (a different few each epoch). drop_last=False: the order is
    padded by repeating its first samples up to a multiple of world_size, so every sample
    is seen at least once and the last batch of a rank may be short. A position p >= n
    reads the sample at ``p % n``."""
    if drop_last:
        per_rank = (n // (world_size * batch_size)) * batch_size
    else:
        per_rank = -(-n // world_size)
    return rank + world_size * np.arange(per_rank)


def rank_positions(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool, source: str):
    """:func:`shard_positions`, or a ValueError naming ``source`` when they give no batch."""
    positions = shard_positions(n, batch_size, rank, world_size, drop_last)
    if len(positions) == 0:
        raise ValueError(f"{n} images in {source} give no batch of {batch_size} on each of {world_size} ranks "
                         f"(drop_last={drop_last})")
    return positions


class EpochOrders:
    """The epoch order, computed once per epoch: ``orders(epoch)`` is :func:`epoch_order`'s
    (or ``make(epoch)``'s, where that gives one) for the latest epoch asked for."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, make=None):
        self.n, self.seed, self.shuffle, self.make = n, seed, shuffle, make
        self._last: tuple[int, np.ndarray] | None = None

    def __call__(self, epoch: int) -> np.ndarray:
        if self._last is None or self._last[0] != epoch:
            order = self.make(epoch) if self.make is not None else None
            self._last = (epoch, epoch_order(self.n, self.seed, epoch, self.shuffle) if order is None else order)
        return self._last[1]

    def __getstate__(self):   # sent to worker processes without the cached order
        return {**self.__dict__, "_last": None}
