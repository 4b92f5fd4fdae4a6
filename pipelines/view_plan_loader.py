"""The loader skeleton every decoding backend fills in.

A backend (torch, DALI, FFCV) supplies only the pixels: for the batch at ``first`` of an
epoch, each view's uint8 crop (or, where its own workers did the colour work, the finished
view), with the sample's draws. Everything around that lives here once:

- the epoch plan: the positions this rank reads (:func:`pipelines.epoch.rank_positions`),
  the batch count, the cursor behind ``set_epoch`` and resume (:class:`EpochCursor`), the
  epoch order (cached per epoch, :class:`pipelines.epoch.EpochOrders`);
- unreadable images: :meth:`ViewPlanLoader.first_readable`, the replacement loop of
  :mod:`pipelines.corrupt` over that order, with the loader's one :class:`CorruptFiles`;
- the hand-over: ``last_params`` (the draws of the batch just handed over, (B, V,
  len(PARAM_NAMES)) float64 on every backend) and, on a CPU device, the colour pass in a
  thread beside the consumer;
- ``Batch`` assembly (:meth:`ViewPlanLoader.finish`): the colour work from the draws (or
  the normalisation of views coloured elsewhere), the boxes from the draws, the index.

The shared vocabulary:

- ``colour``, where the colour steps run: ``'device'``, batched by :mod:`pipelines.colour`
  on the training device after the backend (the fused numba pass on a CPU, tensor ops on a
  GPU; every backend); ``'workers'``, inside the backend's own parallel workers (torch: the
  fused pass in each worker process; DALI: DALI operators in its graph); ``'pil'``, PIL's
  uint8 ops in the workers (torch only, torchvision's semantics on PIL images); ``'auto'``,
  the backend's measured default. A backend lists the places it has in ``COLOUR``.
- ``num_workers``: how many CPU workers decode and cut views in parallel (processes for
  torch, threads for DALI and FFCV). None: one per core this process may use
  (:func:`default_workers`); 0: no pool (torch decodes in the consumer's process; DALI and
  FFCV run one thread).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import sampler
from .batch import Batch, check_loader_options
from .colour import ColourAugment, normalise_uint8, to_device
from .corrupt import MAX_REPLACEMENTS, CorruptFiles, first_readable
from .epoch import EpochCursor, EpochOrders, rank_positions
from .image_folder import scan_image_folder
from .image_header import DEFAULT_MAX_PIXELS
from .prefetch import hand_over
from .recipe import Recipe

COLOUR_PLACES = ("auto", "device", "workers", "pil")


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """One worker per core this process may use, shared among the processes of this node
    (``LOCAL_WORLD_SIZE``, set by torchrun)."""
    return max(available_cores() // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1), 1)


def resolve_workers(num_workers: int | None) -> int:
    """``num_workers`` in the one meaning every backend gives it (module docstring)."""
    if num_workers is None:
        return default_workers()
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be non-negative (0: no worker pool), got {num_workers}")
    return int(num_workers)


class ViewPlanLoader:
    """Base of the decoding backends (see the module docstring).

    ``open_source()`` opens the backend's data and returns (number of samples, a name for
    messages); it is called once the options are checked. A subclass sets ``COLOUR`` (the
    colour places it has, the first one its default for 'auto' unless it overrides
    :meth:`default_colour`) and implements :meth:`batches` and :meth:`sample_name`; it may
    override :meth:`end_pass` (a pass left early) and :meth:`make_order`."""

    COLOUR: tuple[str, ...] = ("device",)
    NAME = "loader"
    MIN_WORKERS = 0   # 1 for a backend with no in-thread mode: num_workers=0 then runs one worker thread

    def __init__(self, open_source: Callable[[], tuple[int, str]], batch_size: int, image_size: int, recipe: Recipe, *,
                 device: str | torch.device = "cpu", num_workers: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, shuffle: bool = True,
                 on_corrupt: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_replacements: int = MAX_REPLACEMENTS, colour: str = "auto",
                 dtype: torch.dtype = torch.float32, colour_chunk: int | None = None,
                 prefetch: int = 2, colour_threads: int = 1):
        check_loader_options(on_corrupt, rank, world_size, seed, max_pixels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.batch_size, self.image_size, self.recipe = batch_size, image_size, recipe
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.shuffle = drop_last, shuffle
        self.on_corrupt, self.max_pixels, self.max_replacements = on_corrupt, max_pixels, max_replacements
        self.num_workers = max(resolve_workers(num_workers), self.MIN_WORKERS)
        self.prefetch, self.colour_threads = prefetch, colour_threads
        self.colour = self.resolve_colour(colour)
        # the data is opened once the options are known to be good
        num_samples, self.source = open_source()
        self.num_samples = int(num_samples)
        self.positions = rank_positions(self.num_samples, batch_size, rank, world_size, drop_last, self.source)
        self.num_batches = -(-len(self.positions) // batch_size)
        self.cursor = EpochCursor(self.num_batches)
        # a backend's own order, where it has one (left out otherwise: the orders object travels
        # to worker processes, and a bound method would take the loader with it)
        own = type(self).make_order is not ViewPlanLoader.make_order
        self.orders = EpochOrders(self.num_samples, seed, shuffle, self.make_order if own else None)
        self.corrupt = CorruptFiles(on_corrupt)
        self.spec = sampler.recipe_spec(recipe, image_size)
        self.sizes = recipe.output_sizes(image_size)
        self.colour_steps = [ColourAugment(v, recipe.mean, recipe.std, dtype, colour_chunk, reuse_outputs=True)
                             for v in recipe.views]
        self.last_params: np.ndarray | None = None

    # ------------------------------------------------------------------ the plan

    def resolve_colour(self, colour: str) -> str:
        """``colour`` checked against this backend's places; 'auto' is :meth:`default_colour`."""
        if colour not in ("auto",) + self.COLOUR:
            raise ValueError(f"colour must be one of {('auto',) + self.COLOUR} for the {self.NAME} backend, "
                             f"got {colour!r} (the places: {', '.join(COLOUR_PLACES[1:])})")
        return self.default_colour() if colour == "auto" else colour

    def default_colour(self) -> str:
        return self.COLOUR[0]

    def make_order(self, epoch: int) -> np.ndarray | None:
        """A backend's own epoch order, or None for :func:`pipelines.epoch.epoch_order`."""
        return None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The items of the whole epoch (every rank's), in order: dataset indices, or for a
        backend reading a file of samples, their places in it."""
        return self.orders(epoch)

    def batch_positions(self, batch: int) -> np.ndarray:
        """Positions in the epoch order of this rank's batch ``batch`` (each < num_samples)."""
        return self.positions[batch * self.batch_size:(batch + 1) * self.batch_size] % self.num_samples

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.cursor.set(epoch, start_batch)

    # ------------------------------------------------------------------ unreadable images

    def open_image_folder(self, data_dir) -> tuple[int, str]:
        """``open_source`` of a backend that reads a folder of images: sets ``images`` (the
        scan) and ``paths`` (each file's path, by dataset index)."""
        self.images = scan_image_folder(data_dir)
        self.paths = [str(p) for p in self.images.paths]
        return len(self.paths), str(self.images.root)

    def sample_name(self, item: int) -> str:
        """How messages name the sample an epoch order holds as ``item`` (its file, or its
        place in a file)."""
        raise NotImplementedError

    def first_readable(self, epoch: int, position: int, read: Callable[[int], object], first: int = 0):
        """``(read(i), i, replaced)`` for the item ``i`` at ``position`` of the epoch order or
        the next readable one after it (:func:`pipelines.corrupt.first_readable`)."""
        return first_readable(self.epoch_order(epoch), position, read, self.sample_name, self.corrupt,
                              self.max_replacements, first)

    # ------------------------------------------------------------------ a batch

    def finish(self, views: Iterable[torch.Tensor], draws: np.ndarray, index, skipped: int,
               coords: list[torch.Tensor] | None = None) -> tuple[Batch, np.ndarray]:
        """The :class:`Batch` of a backend's views and their (B, V, P) draws.

        ``views``: per view (B, 3, S, S) on any device and in any memory format: uint8 crops
        (colour 'device': coloured here from the draws), uint8 coloured views (normalised
        here), or float views already normalised. Boxes come from the draws unless
        ``coords`` gives them."""
        dev = self.device
        out = []
        for v, x in enumerate(views):
            if self.colour == "device":
                x = self.colour_steps[v].apply(to_device(x, dev), sampler.colour_params(draws[:, v]))
            elif x.dtype == torch.uint8:
                x = normalise_uint8(to_device(x, dev), self.recipe.mean, self.recipe.std)
            else:
                x = to_device(x, dev).contiguous(memory_format=torch.channels_last)
            out.append(x)
        if coords is None:
            coords = [sampler.coords_of(draws[:, v]) for v in range(draws.shape[1])]
        index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        return Batch(tuple(out), tuple(to_device(c, dev) for c in coords), to_device(index, dev),
                     int(skipped)), draws

    # ------------------------------------------------------------------ a pass

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Batch, np.ndarray]]:
        """``(batch, draws)`` for batches ``start``.. of ``epoch`` (made by :meth:`finish`)."""
        raise NotImplementedError

    def end_pass(self, finished: bool) -> None:
        """Called when a pass ends: ``finished`` False when it was left before its last batch."""

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.cursor.begin_pass()
        remaining = self.num_batches - start
        # on a CPU device the colour pass runs in a thread beside the consumer; on a GPU it is
        # kernel launches, cheap in this thread
        thread = f"{self.NAME}-colour" if self.colour == "device" and self.device.type == "cpu" else None
        try:
            # hand_over stops the colour thread before end_pass stops the backend's workers
            for batch in hand_over(self, self.batches(epoch, start), thread, self.prefetch, self.colour_threads):
                remaining -= 1
                yield batch
        finally:
            self.end_pass(remaining <= 0)
