"""Batch-sized output buffers reused once nothing outside the pool holds them (the CPU
colour pass writes each batch into one)."""
from __future__ import annotations

import sys

import torch


class OutputPool:
    """Output buffers handed out again once nothing outside the pool holds them.

    On the CPU a fresh batch-sized output is fresh memory from the OS, and its first write
    faults in every page: on a 2-core VM that cost a loader's colour thread several times the
    colour pass itself. A buffer counts as free when no Python reference to it remains but
    the pool's and no other tensor (a view, a slice) shares its memory; a consumer that
    keeps its batches simply makes the pool allocate new ones (at most ``size`` are kept).
    Where the storage use count cannot be read (a torch without that introspection) every
    call allocates.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self.buffers: list[torch.Tensor] = []

    def _matches(self, i: int, shape: tuple, dtype: torch.dtype, device: torch.device) -> bool:
        t = self.buffers[i]
        return tuple(t.shape) == shape and t.dtype == dtype and t.device == device

    def _is_free(self, i: int) -> bool:
        # the pool's list holds the one reference, getrefcount's argument the other
        if sys.getrefcount(self.buffers[i]) > 2 or _storage_use_count is None:
            return False
        # the buffer's own and the temporary storage object's
        return _storage_use_count(self.buffers[i].untyped_storage()._cdata) <= 2

    def take(self, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        shape = tuple(shape)
        for i in range(len(self.buffers)):  # by index: a loop variable would be a reference
            if self._matches(i, shape, dtype, device) and self._is_free(i):
                return self.buffers[i]
        t = torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)
        if _storage_use_count is not None:
            if len(self.buffers) >= self.size:
                self.buffers.pop(0)
            self.buffers.append(t)
        return t


_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)
