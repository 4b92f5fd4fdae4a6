"""Run an iterator in a background thread, a few items ahead, order kept.

Used where a backend's main-thread work (reading files and drawing parameters for DALI,
finishing FFCV's batches on the CPU) should overlap whatever consumes its items. An
exception raised by the iterator is raised in the consumer at the point it was reached.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

import torch


class Prefetcher:
    """``for item in Prefetcher(items, depth)``; ``close()`` stops the thread (also on GC of a
    finished pass). ``on_start`` runs first in the thread (for per-thread settings)."""

    _END = object()

    def __init__(self, items: Iterable, depth: int = 2, name: str = "prefetch",
                 on_start: Callable[[], None] | None = None):
        self.items, self.name, self.on_start = items, name, on_start
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = False

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            if self.on_start is not None:
                self.on_start()
            for item in self.items:
                if not self._put((False, item)):
                    return
            self._put((False, self._END))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((True, exc))

    def __iter__(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        iter(self)
        failed, item = self._queue.get()
        if failed:
            self._done = True
            raise item
        if item is self._END:
            self._done = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop reading ahead; returns once the thread is done."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()


def hand_over(owner, made: Iterable, thread: str | None = None, depth: int = 2, threads: int = 1) -> Iterator:
    """The batches of ``made``'s ``(batch, draws)`` pairs, ``owner.last_params`` set to a
    batch's draws as that batch is handed over (not when a read-ahead thread makes it). With
    ``thread``, ``made`` runs in a :func:`finish_in_thread` thread of that name. When the
    consumer stops, the thread (if any) stops and ``made`` is closed before this returns."""
    source = finish_in_thread(made, depth, thread, threads) if thread else made
    try:
        for batch, draws in source:
            owner.last_params = draws
            yield batch
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def finish_in_thread(batches: Iterable, depth: int, name: str, threads: int = 1) -> Iterator:
    """``batches`` produced in a :class:`Prefetcher` thread running ``threads`` torch threads,
    so that a CPU backend's last pass over each batch (the colour work) overlaps its consumer;
    when the consumer stops, the thread is stopped and then ``batches`` closed."""
    finisher = Prefetcher(batches, depth, name=name, on_start=lambda: torch.set_num_threads(max(1, threads)))
    try:
        yield from finisher
    finally:
        finisher.close()
        close = getattr(batches, "close", None)
        if close is not None:  # the thread is done: a generator's own clean-up runs now, here
            close()
