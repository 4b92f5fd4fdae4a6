"""The ``torch`` backend: PIL decoding and augmentation in DataLoader workers.

The portable CPU fast path. Per sample, ONE decode serves every view of the recipe:

1. open the file (header only), draw every view's parameters (:mod:`pipelines.sampler`),
   then ask libjpeg for the largest DCT down-scaling (1/2, 1/4, 1/8) that still leaves each
   crop window at least its view's output size (``Image.draft``), so large images are never
   decoded in full;
2. crop + resize each view with the window mapped into the reduced image (coords stay in
   ORIGINAL image pixels): antialiased bilinear, by :func:`pipelines.resample.crop_resize`
   straight into the planar uint8 layout the colour pass reads (about half the time of
   PIL's resize), or by PIL's ``Image.resize(size, box=...)`` for ``colour='pil'``;
3. colour work, flip folded into the copy into the batch buffer. ``colour='device'`` (the
   default): workers ship the uint8 crops, and the
   drawn jitter, grayscale, blur, solarize and the normalisation run over the whole batch on
   the training device in :mod:`pipelines.colour` (float semantics, jitter in the fixed
   order brightness, contrast, saturation, hue): on a GPU as tensor ops after a pinned,
   non-blocking copy; on the CPU as the fused numba pass, in a thread that overlaps the
   consumer. ``colour='workers'``: the same fused pass in each worker, which then ships
   float32 views; fresh shared memory for 4x the bytes costs about as much as the pass
   itself (on 2 cores with photos, 'device' ran x1.01-1.2 the rate of 'workers').
   ``colour='pil'``: per view on uint8 PIL images (look-up tables, blends, PIL's box-pass
   Gaussian blur; jitter in the drawn random order, as torchvision on PIL images); workers
   then ship uint8 NHWC views and the main process normalises them on the device. All use
   the same per-sample draws. On 2 cores at 224 px the fused pass costs about a quarter of
   the PIL ops' time.

Determinism: epoch order, sharding, resume and the replacement of unreadable images are the
skeleton's (:mod:`pipelines.view_plan_loader`); a sample's draws come
from (seed, epoch, dataset index, view) only, so the output depends neither on the number
of workers nor on which rank or worker handles it. Unreadable images, and those whose
header declares more than ``max_pixels`` pixels (:mod:`pipelines.image_header`; never
decoded), follow :mod:`pipelines.corrupt` (replaced by the next readable sample of the
epoch order).
"""
from __future__ import annotations

import functools
import gc
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import sampler
from .colour import apply_colour
from .corrupt import MAX_REPLACEMENTS, CorruptFiles, first_readable
from .decode import render_views
from .epoch import EpochOrders
from .image_header import DEFAULT_MAX_PIXELS
from .recipe import BYOL, Recipe
from .view_plan_loader import ViewPlanLoader


# --------------------------------------------------------------------------- epoch plan

class _EpochPlan:
    """DataLoader sampler: yields one descriptor per batch, (epoch, positions in the epoch order)."""

    run_on = False   # set by a loader whose workers outlive a pass: see TorchLoader.batches

    def __init__(self, loader: "TorchLoader"):
        self.loader = loader

    def __len__(self) -> int:
        return max(self.loader.num_batches - self.loader.cursor.start_batch, 0)

    def __iter__(self):
        # the DataLoader may ask more than once per pass: each call reads the same cursor
        cursor = self.loader.cursor
        if self.run_on:
            return self._from(cursor.epoch, cursor.start_batch)
        return self.batches(cursor.epoch, cursor.start_batch)

    def _from(self, epoch: int, start: int):
        """Epoch ``epoch`` from batch ``start``, then every following epoch from its first batch."""
        while True:
            yield from self.batches(epoch, start)
            epoch, start = epoch + 1, 0

    def batches(self, epoch: int, start: int):
        for b in range(start, self.loader.num_batches):
            yield epoch, tuple(int(p) for p in self.loader.batch_positions(b))


# --------------------------------------------------------------------------- worker side

class ViewPlanDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches, keyed by an :class:`_EpochPlan` descriptor.

    Returns ``(views, index B int64, skipped, bad, draws)``: ``views`` one tensor per view
    (uint8 B x 3 x S x S for colour 'device', uint8 B x S x S x 3 for 'pil', float32
    channels-last B x 3 x S x S for 'workers'), ``bad`` the (path, reason) of the unreadable
    files first met, ``draws`` (B, V, len(PARAM_NAMES)).
    """

    def __init__(self, paths: list[Path], recipe: Recipe, image_size: int, orders: EpochOrders,
                 on_corrupt: str = "skip", reducing_gap: float | None = 2.0, max_replacements: int = MAX_REPLACEMENTS,
                 colour: str = "pil", max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths = [str(p) for p in paths]
        self.recipe, self.image_size, self.orders = recipe, image_size, orders
        self.spec = sampler.recipe_spec(recipe, image_size)
        self.sizes = recipe.output_sizes(image_size)
        self.reducing_gap, self.max_replacements, self.max_pixels = reducing_gap, max_replacements, max_pixels
        self.colour = colour
        # workers crop straight into the planar uint8 layout the colour pass reads (PIL's colour
        # ops work on interleaved images)
        self.planar = colour != "pil"
        self.corrupt = CorruptFiles(on_corrupt, quiet=True)   # the owner logs what a batch passes on

    def __len__(self) -> int:
        return len(self.paths)

    def render(self, epoch: int, index: int):
        """Every view of dataset image ``index``: (arrays, coords, draws) of :func:`render_views`."""
        return render_views(self.paths[index], self.recipe, self.image_size, self.orders.seed, epoch, index,
                            self.reducing_gap, colour=self.colour == "pil", spec=self.spec, planar=self.planar,
                            max_pixels=self.max_pixels)

    def sample(self, epoch: int, position: int):
        """((arrays, coords, draws), used index, replaced) for the sample at ``position`` of
        the epoch order or the next readable one."""
        return first_readable(self.orders(epoch), position, functools.partial(self.render, epoch),
                              self.paths.__getitem__, self.corrupt, self.max_replacements)

    def __getitem__(self, desc):
        epoch, positions = desc
        b, nv = len(positions), len(self.sizes)
        views = [torch.empty((b, 3, s, s) if self.planar else (b, s, s, 3), dtype=torch.uint8) for s in self.sizes]
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.colour in ("pil", "device"):
            for v in views:
                v.share_memory_()  # filled in place: no copy into shared memory on the way out
        used = torch.empty((b,), dtype=torch.int64)
        arrays_np = [v.numpy() for v in views]
        drawn = np.zeros((b, nv, len(sampler.PARAM_NAMES)))
        skipped = 0
        for k, pos in enumerate(positions):
            (arrays, _, rows), used[k], replaced = self.sample(epoch, pos)
            for v in range(nv):
                arrays_np[v][k] = arrays[v]
            drawn[k] = rows
            skipped += replaced
        bad = self.corrupt.take_new()
        if self.colour in ("pil", "device"):
            return tuple(views), used, skipped, bad, drawn
        out = []
        for i, view in enumerate(self.recipe.views):
            x = apply_colour(views[i], sampler.colour_params(drawn[:, i]), view.solarize_threshold,
                             self.recipe.mean, self.recipe.std, engine="numba")
            out.append(x.share_memory_() if in_worker else x)
        return tuple(out), used, skipped, bad, drawn


def _no_collate(item):
    return item


def _stop_signals_from_owner_only(owner: int, worker_id: int) -> None:
    """A worker ends on SIGTERM or SIGUSR1 only when ``owner``, the process that iterates the
    loader, sent it (the DataLoader's and multiprocessing's shutdown) or has gone. Slurm and
    torchrun send these signals to every process of a job; the training process handles them
    (finish the step, save), and a worker killed by one would fail the batch that process may
    be waiting for. The signals are blocked in the worker and read by a thread that sees the
    sender."""
    if not hasattr(signal, "sigwaitinfo"):   # not on macOS or Windows: the default actions stay
        return
    stops = {signal.SIGTERM, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)   # threads started later inherit the mask

    def wait():
        while True:
            info = signal.sigwaitinfo(stops)
            if info.si_pid == owner or not _alive(owner):
                os._exit(128 + info.si_signo)
    threading.Thread(target=wait, name="stop-signals", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# --------------------------------------------------------------------------- main-process side

class TorchLoader(ViewPlanLoader):
    """View-plan loader over an image folder (see the module docstring for the contract).

    Options beyond those of :class:`pipelines.view_plan_loader.ViewPlanLoader`: the
    DataLoader's ``pin_memory`` (default: on for a CUDA device), ``prefetch_factor`` and
    ``persistent_workers`` (default: on), and ``reducing_gap`` (see :func:`render_views`)."""

    COLOUR = ("device", "workers", "pil")
    NAME = "torch"

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 pin_memory: bool | None = None, prefetch_factor: int | None = None,
                 persistent_workers: bool | None = None, reducing_gap: float | None = 2.0, **options):
        super().__init__(functools.partial(self.open_image_folder, data_dir), batch_size, image_size, recipe,
                         **options)
        self.dataset = ViewPlanDataset(self.paths, recipe, image_size, self.orders, self.on_corrupt,
                                       reducing_gap, self.max_replacements, self.colour, self.max_pixels)
        self.plan = _EpochPlan(self)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        workers = self.num_workers > 0
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=self.plan, num_workers=self.num_workers,
            collate_fn=_no_collate, pin_memory=pin_memory,
            worker_init_fn=functools.partial(_stop_signals_from_owner_only, os.getpid()),
            prefetch_factor=(prefetch_factor or 2) if workers else None,
            persistent_workers=(workers if persistent_workers is None else persistent_workers and workers))
        # persistent workers read on into the next epoch while this one is consumed: one stream
        # of batches across passes, so an epoch's end costs no stall (see batches)
        self.plan.run_on = self._loader.persistent_workers
        self._stream = None
        self._stream_at: tuple[int, int] | None = None   # (epoch, batch) the stream yields next

    def sample_name(self, index: int) -> str:
        return self.paths[index]

    def _to_batch(self, raw):
        views, used, skipped, bad, drawn = raw
        for path, reason in bad:
            self.corrupt.report(path, reason)
        if self.colour == "pil":   # uint8 NHWC, coloured: an NCHW view of channels-last memory
            views = [v.permute(0, 3, 1, 2) for v in views]
        return self.finish(views, drawn, used, skipped)

    def _raw_batches(self, epoch: int, start: int) -> Iterator:
        """The pass's raw batches. With persistent workers they come from one stream that runs
        on into the following epochs, so the workers prepare the next epoch's first batches
        while this one ends; a pass that does not start where the stream stands (a
        ``set_epoch`` elsewhere, an abandoned pass) starts the stream again there.

        The DataLoader's iterator, which forks the worker processes, is made here, in the
        caller's thread, not lazily in the colour thread that reads the batches: a fork from a
        thread other than the one that started numba's TBB pool (FFCV starts it on import)
        leaves TBB in an undefined state in the workers, and numba says so on stderr."""
        if self.num_workers > 0 and getattr(self._loader, "_iterator", None) is None:
            gc.collect()  # finalise garbage here, not in the workers about to be forked (a finaliser may hang there)
        if not self.plan.run_on:
            return iter(self._loader)
        if self._stream is None or self._stream_at != (epoch, start):
            self._stream = iter(self._loader)   # (re)starts the sampler at the cursor
        return self._stream_batches(epoch, start)

    def _stream_batches(self, epoch: int, start: int) -> Iterator:
        last = self.num_batches - 1
        for b in range(start, last + 1):
            raw = next(self._stream)
            self._stream_at = (epoch + 1, 0) if b == last else (epoch, b + 1)
            yield raw

    def batches(self, epoch: int, start: int):
        raw = self._raw_batches(epoch, start)   # workers start here, in the caller's thread
        return (self._to_batch(r) for r in raw)

    def end_pass(self, finished: bool) -> None:
        # a consumer that takes the pass's last batch and then drops the iterator (a training
        # loop counting its steps) has finished the pass: the workers read on. A failed or
        # abandoned pass leaves no half-read persistent workers behind.
        if not finished:
            self.close()

    def close(self) -> None:
        """Stop the worker processes now (they are restarted by the next pass)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None
        self._stream = self._stream_at = None


def build_torch_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                       **options) -> TorchLoader:
    """Factory used by :func:`pipelines.build_loader` (options: see :class:`TorchLoader`)."""
    return TorchLoader(data_dir, batch_size, image_size, recipe, **options)
